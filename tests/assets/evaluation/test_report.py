"""The report's pure parts: the Pareto front, the plots, and the provenance and production rows."""

import io

from PIL import Image

from assets.evaluation.report import (
    champion_moved_line,
    history_plot,
    pareto_front,
    production_rows,
    provenance_line,
    provenance_rows,
    quality_cost_plot,
)


def test_pareto_front_keeps_what_nothing_beats_on_both_cost_and_quality():
    points = {"retrieval": (2.3, 0.061), "sequential": (9.8, 0.050), "gutted": (280.0, 0.080),
              "full_vlm": (3100.0, 0.075), "twin": (280.0, 0.080)}
    assert pareto_front(points) == ["retrieval", "gutted", "twin"]  # ties are both on the front, by cost
    assert pareto_front({"a": (1.0, 0.5)}) == ["a"] and pareto_front({}) == []
    assert pareto_front({"cheap_best": (1.0, 0.9), "dear_worse": (5.0, 0.1)}) == ["cheap_best"]


def test_quality_cost_plot_draws_every_system(monkeypatch):
    import assets.evaluation.report as report

    def system(ndcg, ms):
        return {"ndcg_at_10": ndcg, "ndcg_at_10_ci": [ndcg - 0.01, ndcg + 0.01], "ms_per_1k_candidates": ms}

    figures, png = [], report._png
    monkeypatch.setattr(report, "_png", lambda fig: figures.append(fig) or png(fig))
    section = {"systems": {"random": system(0.01, None), "retrieval": system(0.06, 2.3),
                           "gutted": system(0.08, 280.0), "full_vlm": system(0.075, 3100.0)}}
    image = Image.open(io.BytesIO(quality_cost_plot(section)))
    assert image.size == (640, 400)
    (ax,) = figures[0].axes
    assert {t.get_text().strip() for t in ax.texts} == {"random", "retrieval", "gutted", "full vlm"}
    front = next(line for line in ax.get_lines() if line.get_label() == "Pareto front")
    assert list(front.get_xdata()) == [2.3, 280.0] and list(front.get_ydata()) == [0.06, 0.08]
    assert [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"] == [0.01]  # random


def test_provenance_and_production_rows_read_like_a_table():
    report = {
        "production_estimate": {"Qwen3-VL-2B": {"full_flops_per_candidate": 1.21e12,
                                                "gutted_flops_per_candidate": 4.8e10, "ratio": 25.2}},
        "provenance": {
            "run": {"id": "abcdef12-3456", "url": "http://127.0.0.1:3000/runs/abcdef12-3456"},
            "commit": "0123abc", "host": {"cpus": 2, "torch_threads": 2, "device": "cpu", "load_average_1min": 1.5,
                                          "versions": {"torch": "2.13.0", "faiss": None}},
            "assets": {"image_encoder": {"run_id": "abcdef12-3456", "version": "v1",
                                         "settings": {"epochs": 2, "pair_weight": 1.0}},
                       "candidates": {"run_id": "ffffeeee-1", "version": None, "settings": None}},
        },
    }
    assert production_rows(report) == [{"model": "Qwen3-VL-2B", "full VLM GFLOPs/cand": "1,210.0",
                                         "gutted GFLOPs/cand": "48.00", "full / gutted": "25.2x"}]
    assert provenance_rows(report) == [
        {"asset": "image_encoder", "version": "v1", "run": "abcdef12", "settings": "epochs=2, pair_weight=1"},
        {"asset": "candidates", "version": "-", "run": "ffffeeee", "settings": "-"}]
    line = provenance_line(report)
    assert line.startswith("commit 0123abc; Dagster run abcdef12-3456; cpu, 2 CPUs, 2 torch threads")
    assert "torch 2.13.0" in line and "faiss" not in line  # absent libraries are left out
    assert provenance_line({}) == "provenance: not recorded (a report from before provenance)"


def test_provenance_line_says_when_the_commit_is_unknown():
    report = {"provenance": {"run": {"id": "r", "url": "u"}, "commit": None,
                             "host": {"cpus": 1, "torch_threads": 1, "device": "cpu", "load_average_1min": 0.0,
                                      "versions": {}}, "assets": {}}}
    assert provenance_line(report).startswith("commit unknown; ")


def test_a_champion_moved_by_hand_after_the_report_is_noted():
    report = {"challenger": {"version": "new", "champion": "old"}}
    assert champion_moved_line(report, "old") is None  # the gate kept the champion
    assert champion_moved_line(report, "new") is None  # the gate promoted the challenger
    assert champion_moved_line(report, None) is None
    line = champion_moved_line(report, "older")  # `lensless rollback` / `promote older` since
    assert "now older" in line and "with old" in line and "evaluation_job" in line
    first = {"challenger": {"version": "v1", "champion": None}}
    assert "with no champion" in champion_moved_line(first, "v0")


def test_a_system_added_later_is_drawn_at_the_reports_that_have_it(monkeypatch):
    import assets.evaluation.report as report

    figures, png = [], report._png
    monkeypatch.setattr(report, "_png", lambda fig: figures.append(fig) or png(fig))
    reports = [{"systems": {"retrieval": {"ndcg_at_10": 0.05}}},
               {"systems": {"retrieval": {"ndcg_at_10": 0.06}}},
               {"systems": {"retrieval": {"ndcg_at_10": 0.06}, "sequential": {"ndcg_at_10": 0.08}}}]
    history_plot(reports)
    lines = {line.get_label(): line for line in figures[0].axes[0].get_lines()}
    assert list(lines["retrieval"].get_xdata()) == [1, 2, 3]
    assert list(lines["sequential"].get_xdata()) == [3] and list(lines["sequential"].get_ydata()) == [0.08]
