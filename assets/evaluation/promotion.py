"""Which gutted reranker serves: the promotion rule, its outcome, and moves by hand. No Dagster.

The champion pointer lives in the model store (the log `models/reranker_champion/pointers/`,
versions of `gutted_reranker`). `reranker_champion` applies `promotion_decision` to the
latest report; `promote` and `rollback` are what `lensless promote` / `rollback` do (the
command line also records them in Dagster, so the UI shows who serves and why).
"""

from __future__ import annotations

from assets.store.files import Home
from assets.store.models import pointers, set_current

CHAMPION = "reranker_champion"  # the pointer's kind; its versions are gutted_reranker's
CHALLENGER = "gutted_reranker"


def promotion_decision(report: dict) -> tuple[bool, str]:
    """(promote?, why) for the report's challenger.

    Promote unless the challenger is worse, beyond the confidence interval, than either bar:
    the current champion, or retrieval alone (the cosine order of the very candidates it
    reranks) in either task (related images; for a user, when the report has one), so a
    reranker that ranks worse than no reranker never serves. "Worse beyond
    the interval" means the paired bootstrap 95% interval of (challenger − bar) NDCG@10 on
    the same held-out queries lies entirely below zero. Before there is a champion, only
    retrieval is a bar.
    """
    ch = report["challenger"]
    bars = [("retrieval", ch["retrieval_ndcg_diff"], ch["retrieval_ndcg_diff_ci"]),
            (f"champion {ch['champion']}", ch["ndcg_diff"], ch["ndcg_diff_ci"])]
    if "user_task" in report:
        c = report["user_task"]["comparisons"]["gutted_vs_retrieval"]
        bars.append(("retrieval for a user", c["diff"], c["ci"]))
    verdicts = []
    worse = False
    for name, diff, ci in bars:
        if ci is None:
            continue
        lo, hi = ci
        worse |= hi < 0
        verdicts.append(f"{'worse than' if hi < 0 else 'not worse than'} {name}: "
                        f"NDCG@10 diff {diff:+.4f}, CI [{lo:+.4f}, {hi:+.4f}]")
    return not worse, ("challenger " if worse else "") + "; ".join(verdicts)


def promotion_outcome(home: Home, report: dict) -> str:
    """`champion: X` when the report's challenger passed the gate, else why it did not."""
    champion = pointers(home, CHAMPION)["current"]
    passed, why = promotion_decision(report)
    if passed:
        return f"champion: {champion}"
    challenger = report["challenger"]["version"]
    if challenger == champion:  # promoted earlier, by hand or under an older rule
        return f"champion {champion} fails the promotion check now: {why}; it serves until `lensless promote` or `rollback`"
    serving = champion or "none (recommendations keep retrieval order)"
    return f"challenger {challenger} NOT promoted: {why}; champion stays {serving}"


def promote(home: Home, version: str | None = None, reason: str = "manual promote") -> str:
    """Make `version` (default: the latest challenger) the champion; returns it."""
    version = version or pointers(home, CHALLENGER)["current"]
    if version is None:
        raise ValueError("no gutted reranker trained yet: nothing to promote")
    set_current(home, CHAMPION, version, reason=reason, versions_of=CHALLENGER)
    return version


ROLLBACK = "rollback from"  # the reason of a rollback's pointer record: "rollback from <version>"


def champion_stack(history: list[dict]) -> list[str]:
    """The champions in force, oldest first, replayed from the pointer records: a promotion
    puts its version on top, a rollback takes the top off (what is left on top is what it
    restored). So successive rollbacks walk back C -> B -> A, never back to C."""
    stack: list[str] = []
    for record in history:
        if record.get("reason", "").startswith(ROLLBACK) and stack:
            stack.pop()
        if not stack or stack[-1] != record["version"]:
            stack.append(record["version"])
    return stack


def rollback(home: Home) -> tuple[str, str]:
    """Point the champion back at the one before it; returns (from, to)."""
    state = pointers(home, CHAMPION)
    stack = champion_stack(state["history"])
    if len(stack) < 2:
        raise ValueError(f"no earlier champion to roll back to (champions in force: {stack or 'none'})")
    set_current(home, CHAMPION, stack[-2], reason=f"{ROLLBACK} {state['current']}", versions_of=CHALLENGER,
                expect=state["current"])
    return state["current"], stack[-2]
