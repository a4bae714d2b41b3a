"""bench/index.py end to end on a small synthetic set: the tuned setting and an --also setting
timed side by side against exact search."""

import importlib.util
from pathlib import Path


def _bench():
    path = Path(__file__).resolve().parents[2] / "bench" / "index.py"
    spec = importlib.util.spec_from_file_location("bench_index", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_an_also_setting_is_timed_beside_the_tuned_one():
    out = _bench().main(["--n", "30000", "--factory", "IVF64,Flat", "--also", "nprobe=64",
                         "--single", "10", "--repeats", "2", "--json"])
    assert out["met_target"] and out["recall_at_10"] >= 0.95
    (also,) = out["also"]
    # nprobe=64 scans every list: exact recall, and slower than the tuned (fewer-list) setting
    assert also["params"] == "nprobe=64" and also["recall_at_10"] == 1.0
    assert out["params"] != "nprobe=64" and also["speedup_vs_exact"] < out["speedup_vs_exact"]
    assert also["qps"] > 0 and out["exact_qps"] > 0
    # the host's pace is the exact search's own: 2 n d flops per query at its median QPS
    n, d = out["n"], out["d"]
    assert abs(out["exact_gflops"] - 2 * n * d * out["exact_qps"] / 1e9) <= 0.05 + 0.01 * out["exact_gflops"]
    assert out["exact_single_gbps"] > 0
