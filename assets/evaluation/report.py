"""The evaluation report: report.json, a self-contained report.html, and its history. No Dagster.

`write_report(home, report)` writes `reports/<run_id>/report.json` and `report.html` (plots
embedded as data URIs: quality against cost per system, and NDCG@10 of every system over
the earlier reports), then points `reports/latest.json` at it (one atomic write, on a disk or
in a bucket).
A report holds two tasks: related images (its top-level `systems`, `comparisons`,
`cost_ratio`) and, with an engagement log, for a user (`user_task`, the same fields); the
tables and plots below take either as their `section`.
"""

from __future__ import annotations

import html
import io
import json
import re

from upath import UPath

from assets.evaluation.promotion import promotion_decision
from assets.store.files import Home, read_json, write_bytes, write_json

SYSTEMS = ("random", "popularity", "retrieval", "sequential", "gutted", "full_vlm")  # both tasks
REQUIRED = {
    "run_id": str, "created_at": str, "dataset": dict, "encoder": dict, "index": dict, "systems": dict,
    "cost_ratio": dict, "production_estimate": dict, "comparisons": dict,
}
SYSTEM_FIELDS = ("ndcg_at_10", "ndcg_at_10_ci", "recall_at_10", "recall_at_50", "mrr",
                 "flops_per_candidate", "ms_per_1k_candidates", "tokens_per_candidate")


def reports_dir(home: Home) -> UPath:
    """`<home>/reports`."""
    return home.path("reports")


def latest_dir(home: Home) -> UPath:
    """The newest report's folder (`reports/latest.json` names it); FileNotFoundError when
    there is none yet."""
    pointer = reports_dir(home) / "latest.json"
    if not pointer.exists():
        raise FileNotFoundError(f"no report yet in {reports_dir(home)}: run `lensless demo` or "
                                "`lensless run --source ...` (or materialise evaluation_report)")
    return reports_dir(home) / read_json(pointer)["run_id"]


def validate_report(report: dict) -> None:
    """Raise ValueError naming the first field that does not match the documented shape."""
    for key, typ in REQUIRED.items():
        if not isinstance(report.get(key), typ):
            raise ValueError(f"report field {key!r} must be {typ.__name__}, got {type(report.get(key)).__name__}")
    for key in ("source", "images", "quarantined", "labels", "queries"):
        if key not in report["dataset"]:
            raise ValueError(f"report.dataset lacks {key!r}")
    for key in ("dim", "knn_precision_at_10", "pixel_baseline_knn_precision_at_10"):
        if key not in report["encoder"]:
            raise ValueError(f"report.encoder lacks {key!r}")
    for key in ("factory", "recall_at_10", "qps", "exact_qps"):
        if key not in report["index"]:
            raise ValueError(f"report.index lacks {key!r}")
    sections = [("report", report, SYSTEMS)]
    if "user_task" in report:
        if not isinstance(report["user_task"].get("history_length"), int):
            raise ValueError("report.user_task.history_length must be an int")
        sections.append(("report.user_task", report["user_task"], SYSTEMS))
    for where, section, names in sections:
        if set(section["systems"]) != set(names):
            raise ValueError(f"{where}.systems must be exactly {names}, got {sorted(section['systems'])}")
        for name, sys_ in section["systems"].items():
            missing = [f for f in SYSTEM_FIELDS if f not in sys_]
            if missing:
                raise ValueError(f"{where}.systems.{name} lacks {missing}")
            ci = sys_["ndcg_at_10_ci"]
            if not (isinstance(ci, list) and len(ci) == 2 and ci[0] <= sys_["ndcg_at_10"] + 1e-9
                    and sys_["ndcg_at_10"] <= ci[1] + 1e-9):
                raise ValueError(f"{where}.systems.{name}.ndcg_at_10_ci {ci} does not bracket {sys_['ndcg_at_10']}")
        for key in ("flops", "ms"):
            if not isinstance(section["cost_ratio"].get(key), (int, float)):
                raise ValueError(f"{where}.cost_ratio.{key} must be a number")
    for model, row in report["production_estimate"].items():
        for key in ("full_flops_per_candidate", "gutted_flops_per_candidate", "ratio"):
            if not isinstance(row.get(key), (int, float)):
                raise ValueError(f"report.production_estimate.{model}.{key} must be a number")


def latest_report(home: Home) -> dict:
    """The newest report.json; FileNotFoundError when there is none yet."""
    return read_json(latest_dir(home) / "report.json")


def history(home: Home) -> list[dict]:
    """Earlier reports (oldest first), as loaded report.json dicts."""
    root = reports_dir(home)
    if not root.exists():
        return []
    out = []
    for d in root.iterdir():
        f = d / "report.json"
        if d.is_dir() and f.exists():
            out.append(read_json(f))
    return sorted(out, key=lambda r: r["created_at"])


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """The systems no other system beats on both cost (lower) and quality (higher), by cost."""
    front = [a for a, (ca, qa) in points.items()
             if not any(cb <= ca and qb >= qa and (cb, qb) != (ca, qa) for b, (cb, qb) in points.items() if b != a)]
    return sorted(front, key=lambda name: points[name][0])


def quality_cost_plot(section: dict, title: str = "quality against cost") -> bytes:
    """NDCG@10 (with its CI) against ms per 1k candidates, one labelled point per system that
    has a cost, the Pareto front (cheapest for its quality) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    free = {name: s for name, s in section["systems"].items() if s["ms_per_1k_candidates"] is None}
    costed = {name: s for name, s in section["systems"].items() if name not in free}
    front = pareto_front({name: (s["ms_per_1k_candidates"], s["ndcg_at_10"]) for name, s in costed.items()})
    for name, s in costed.items():
        lo, hi = s["ndcg_at_10_ci"]
        ax.errorbar(s["ms_per_1k_candidates"], s["ndcg_at_10"], yerr=[[s["ndcg_at_10"] - lo], [hi - s["ndcg_at_10"]]],
                    fmt="o", capsize=4, color="tab:blue" if name in front else "tab:grey")
        ax.annotate(name.replace("_", " "), (s["ms_per_1k_candidates"], s["ndcg_at_10"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    ax.plot([costed[n]["ms_per_1k_candidates"] for n in front], [costed[n]["ndcg_at_10"] for n in front],
            ls="--", lw=1, color="tab:blue", drawstyle="steps-post", label="Pareto front")
    ax.set_xscale("log")
    for name, s in free.items():  # systems without a measured cost: a labelled line, after the x range is known
        ax.axhline(s["ndcg_at_10"], ls=":", lw=1, color="grey")
        ax.text(ax.get_xlim()[0], s["ndcg_at_10"], f" {name}", va="bottom", fontsize=8, color="grey")
    ax.set(xlabel="measured ms per 1,000 candidates (log)", ylabel="NDCG@10", title=title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = _png(fig)
    plt.close(fig)
    return png


def history_plot(reports: list[dict]) -> bytes:
    """NDCG@10 per system across reports (oldest to newest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for name in SYSTEMS:
        xs = [i for i, r in enumerate(reports, 1) if name in r.get("systems", {})]  # a system added later
        ax.plot(xs, [reports[i - 1]["systems"][name]["ndcg_at_10"] for i in xs], marker="o", label=name)  # starts later
    ax.set(xlabel="report (oldest → newest)", ylabel="NDCG@10", title="metric history")
    n = max(len(reports), 1)  # reports are counted: integer ticks only
    ax.xaxis.set_major_locator(FixedLocator(range(1, n + 1)) if n <= 20 else MaxNLocator(integer=True))
    ax.set_xlim(0.5, n + 0.5)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = _png(fig)
    plt.close(fig)
    return png


COMPARISONS = {"gutted_vs_retrieval": ("gutted", "retrieval"), "gutted_vs_sequential": ("gutted", "sequential"),
               "gutted_vs_full_vlm": ("gutted", "full_vlm"), "gutted_vs_popularity": ("gutted", "popularity"),
               "challenger_vs_champion": ("challenger", "champion")}


def verdict(ci: list[float]) -> str:
    """What a paired 95% interval of a difference says."""
    lo, hi = ci
    return "better" if lo > 0 else "worse" if hi < 0 else "no significant difference"


def _cost_line(section: dict, a: str, b: str) -> str:
    systems, ratio = section["systems"], section["cost_ratio"]
    if b == "full_vlm":
        line = f"{ratio['flops']:.1f}x fewer FLOPs, {ratio['ms']:.1f}x less time"
        if "analytic_flops_at_equal_history" in ratio:
            at = ratio["measured_at_history"]
            line += (f" (history {at['gutted']} vs {at['full_vlm']} images; at equal history "
                     f"{ratio['analytic_flops_at_equal_history']:.1f}x fewer FLOPs, analytic)")
        return line
    if b in ("retrieval", "sequential"):
        return f"{systems['gutted']['ms_per_1k_candidates'] / systems[b]['ms_per_1k_candidates']:,.0f}x {b}'s time"
    return "same model" if b == "champion" else "-"


def decision_rows(section: dict) -> list[dict]:
    """One row per comparison that decides whether the gutted model is worth serving: the
    paired NDCG@10 difference, its interval, the cost ratio and the verdict."""
    rows = []
    for key, (a, b) in COMPARISONS.items():
        c = section["comparisons"].get(key)
        if c is None:
            continue
        lo, hi = c["ci"]
        rows.append({"comparison": f"{a} vs {b}".replace("_", " "),
                     "NDCG@10 difference [95% CI]": f"{c['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]",
                     "cost": _cost_line(section, a, b), "verdict": verdict(c["ci"])})
    return rows


def promotion_line(report: dict) -> str:
    """What the promotion gate says of this report's challenger."""
    passed, why = promotion_decision(report)
    return f"challenger {report['challenger']['version']}: {'passes' if passed else 'stopped by'} the promotion gate ({why})"


def champion_moved_line(report: dict, champion: str | None) -> str | None:
    """A note when the serving `champion` is neither the one this report compared the
    challenger with nor the challenger (it was promoted or rolled back by hand since);
    None when the report still describes what serves."""
    compared, challenger = report["challenger"]["champion"], report["challenger"]["version"]
    if champion is None or champion in (compared, challenger):
        return None
    return (f"note: the champion is now {champion}, moved by hand after this report (which compared the "
            f"challenger with {compared or 'no champion'}); `lensless submit evaluation_job` (with a daemon) or "
            "materialising evaluation_report in the UI refreshes it")


def forest_plot(section: dict, title: str = "does the gutted model rank better?") -> bytes:
    """Paired NDCG@10 differences with their 95% intervals and a zero line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [(f"{a} − {b}".replace("_", " "), section["comparisons"][k]) for k, (a, b) in COMPARISONS.items()
             if k in section["comparisons"]]
    fig, ax = plt.subplots(figsize=(6.4, 0.6 * len(items) + 1.2))
    for i, (_, c) in enumerate(reversed(items)):
        lo, hi = c["ci"]
        color = "tab:green" if lo > 0 else "tab:red" if hi < 0 else "tab:grey"
        ax.errorbar(c["diff"], i, xerr=[[c["diff"] - lo], [hi - c["diff"]]], fmt="o", capsize=4, color=color)
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(range(len(items)), [label for label, _ in reversed(items)])
    ax.set(xlabel="paired NDCG@10 difference (95% CI)", title=title)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    png = _png(fig)
    plt.close(fig)
    return png


def _ms(system: dict) -> str:
    """Measured ms per 1,000 candidates: the median, and the range of interleaved repeats."""
    if system["ms_per_1k_candidates"] is None:
        return "-"
    rng = system.get("ms_per_1k_candidates_range")
    return f"{system['ms_per_1k_candidates']:.1f}" + (f" [{rng[0]:.0f}–{rng[1]:.0f}]" if rng else "")


def summary_rows(section: dict) -> list[dict]:
    """One row per system for tables (markdown, HTML, the command line)."""
    rows = []
    for name in [n for n in SYSTEMS if n in section["systems"]]:
        s = section["systems"][name]
        lo, hi = s["ndcg_at_10_ci"]
        rows.append({"system": name, "NDCG@10": f"{s['ndcg_at_10']:.3f} [{lo:.3f}, {hi:.3f}]",
                     "R@10": round(s["recall_at_10"], 3), "R@50": round(s["recall_at_50"], 3), "MRR": round(s["mrr"], 3),
                     "GFLOPs/cand": "-" if s["flops_per_candidate"] is None else f"{s['flops_per_candidate'] / 1e9:.4f}",
                     "ms/1k cand": _ms(s),
                     "tokens/cand": "-" if s["tokens_per_candidate"] is None else s["tokens_per_candidate"]})
    return rows


def _html_table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _setting(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def provenance_rows(report: dict) -> list[dict]:
    """One row per trained asset the report rests on: its version, the run and its settings."""
    assets = report.get("provenance", {}).get("assets", {})
    return [{"asset": name, "version": a["version"] or "-", "run": a["run_id"][:8],
             "settings": ", ".join(f"{k}={_setting(v)}" for k, v in (a["settings"] or {}).items()) or "-"}
            for name, a in assets.items()]


def provenance_line(report: dict) -> str:
    """Code, run and host in one line: what a reader needs to trust or reproduce the timings."""
    p = report.get("provenance")
    if p is None:
        return "provenance: not recorded (a report from before provenance)"
    h, versions = p["host"], p["host"]["versions"]
    libs = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    return (f"commit {p['commit'] or 'unknown'}; Dagster run {p['run']['id']}; {h['device']}, {h['cpus']} CPUs, "
            f"{h['torch_threads']} torch threads, load average {h['load_average_1min']} at report time; {libs}")


def production_rows(report: dict) -> list[dict]:
    """The analytic production estimate, in GFLOPs per candidate."""
    return [{"model": name, "full VLM GFLOPs/cand": f"{row['full_flops_per_candidate'] / 1e9:,.1f}",
             "gutted GFLOPs/cand": f"{row['gutted_flops_per_candidate'] / 1e9:,.2f}",
             "full / gutted": f"{row['ratio']:.1f}x"} for name, row in report["production_estimate"].items()]


def render_html(report: dict, plots: dict[str, bytes], extra_tables: dict[str, list[dict]]) -> str:
    """A self-contained HTML page: headline, tables, embedded plots."""
    import base64

    def img(title: str, png: bytes) -> str:
        return f'<img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'

    plots = dict(plots)
    forest = img("paired differences", plots.pop("Paired differences")) if "Paired differences" in plots else ""
    users = report.get("user_task")
    user_forest = img("for a user: paired differences", plots.pop("For a user: paired differences", b"")) if users else ""
    imgs = "".join(f"<h2>{html.escape(t)}</h2>{img(t, p)}" for t, p in plots.items())
    tables = "".join(f"<h2>{html.escape(t)}</h2>{_html_table(rows)}" for t, rows in extra_tables.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>lensless report {html.escape(report['run_id'])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:right}}
th{{background:#f3f3f3}}</style></head><body>
<h1>lensless evaluation report</h1>
<p>run <code>{html.escape(report['run_id'])}</code>, {html.escape(report['created_at'])};
source {html.escape(str(report['dataset']['source']))}: {report['dataset']['images']} images,
{report['dataset']['queries']} evaluation queries.</p>
<p id="promotion"><b>Promotion:</b> {html.escape(promotion_line(report))}</p>
<div style="display:flex;gap:2em;flex-wrap:wrap">
<div><h2>Related images: decision</h2>{_html_table(decision_rows(report))}{forest}
<h3>Systems</h3>{_html_table(summary_rows(report))}</div>
{_user_html(users, user_forest)}
</div>{tables}{imgs}
<h2 id="provenance">Provenance</h2><p>{_provenance_html(report)}</p>{_html_table(provenance_rows(report))}
<h2>report.json</h2><pre>{html.escape(json.dumps(report, indent=2))}</pre></body></html>"""


def _provenance_html(report: dict) -> str:
    p = report.get("provenance")
    link = f' (<a href="{html.escape(p["run"]["url"])}">the run in the Dagster UI</a>)' if p else ""
    return html.escape(provenance_line(report)) + link


def _user_html(users: dict | None, forest: str) -> str:
    """The "for a user" column of report.html."""
    if users is None:
        return "<div><h2>For a user</h2><p>No user task: the catalog has no engagement log.</p></div>"
    return (f"<div><h2>For a user: decision</h2><p>{users['users']} test users, history of "
            f"{users['history_length']} images (the full VLM reads the latest {users['full_vlm_history']}).</p>"
            f"{_html_table(decision_rows(users))}{forest}<h3>Systems</h3>{_html_table(summary_rows(users))}</div>")


def write_report(home: Home, report: dict, extra_tables: dict[str, list[dict]] | None = None) -> UPath:
    """Validate and write report.json + report.html under reports/<run_id>/; update `latest`."""
    validate_report(report)
    folder = reports_dir(home) / report["run_id"]
    past = [r for r in history(home) if r["run_id"] != report["run_id"]] + [report]
    plots = {"Paired differences": forest_plot(report, "related images: does the gutted model rank better?"),
             "Quality against cost": quality_cost_plot(report, "related images: quality against cost")}
    if "user_task" in report:
        plots["For a user: paired differences"] = forest_plot(report["user_task"], "for a user: does the gutted model rank better?")
        plots["For a user: quality against cost"] = quality_cost_plot(report["user_task"], "for a user: quality against cost")
    plots["Metric history"] = history_plot(past)
    for name, png in plots.items():
        write_bytes(png, folder / (re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") + ".png"))
    write_json(report, folder / "report.json")
    write_bytes(render_html(report, plots, extra_tables or {}).encode(), folder / "report.html")
    write_json({"run_id": report["run_id"]}, reports_dir(home) / "latest.json")
    return folder
