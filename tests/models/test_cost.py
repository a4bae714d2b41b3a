"""Cost: counted FLOPs agree with the analytic formula; the gutted model is far cheaper."""

from __future__ import annotations

import pytest
import torch

from models.cost import (
    analytic_flops,
    cost_rows,
    flops_per_candidate,
    ms_per_1k_candidates,
    tokens_per_candidate,
)
from models.full_vlm import FullVLMConfig, build_full_vlm
from models.gutted_vlm import build_gutted

RES = 64


@pytest.fixture(scope="module")
def models():
    return build_gutted(), build_full_vlm(FullVLMConfig(resolution=RES))


def _inputs(b=2, c=4):
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(b, 128, generator=g), torch.randn(b, c, 128, generator=g)
    pix = tuple(
        torch.randint(0, 256, (*s, RES, RES, 3), generator=g, dtype=torch.uint8)
        for s in ((b,), (b, c))
    )
    return emb, pix


@pytest.mark.parametrize("use_cache", [False, True])
def test_counted_flops_match_analytic_formula(models, use_cache):
    gutted, full = models
    (q, c), (qp, cp) = _inputs()
    a = analytic_flops(
        "tiny", resolution=RES, gutted=gutted.cfg, question_tokens=len(gutted.question_ids),
        cue_tokens=len(gutted.cue_ids),
        candidates_per_query=c.shape[1], use_cache=use_cache,
    )  # fmt: skip
    g = flops_per_candidate(gutted, q, c, use_cache=use_cache)
    f = flops_per_candidate(full, qp, cp, use_cache=use_cache)
    assert g == pytest.approx(a["gutted_gflops"] * 1e9, rel=0.1)
    assert f == pytest.approx(a["full_gflops"] * 1e9, rel=0.1)
    assert f > g  # at 64 px the full VLM has 16 image tokens; 224 px gives 49


def test_tokens_and_timing(models):
    gutted, full = models
    (q, c), _ = _inputs()
    t = tokens_per_candidate(gutted, candidates_per_query=4)
    assert gutted.suffix_tokens() == 2  # the engagement prior's and the similarity token
    assert t["image_tokens"] == 4 and t["prompt_tokens"] == 2 * (4 + 2) + 2 + len(gutted.question_ids) + 2
    # the question is in the prefix, read once per query; each candidate pays only the 2-token cue
    assert t["per_candidate_cache"] == (4 + 2) + 2 + 2 + (4 + 2 + len(gutted.question_ids)) / 4
    assert tokens_per_candidate(full)["image_tokens"] == (RES // 32) ** 2
    assert ms_per_1k_candidates(gutted, q, c, repeats=1, warmup=0) > 0


def test_production_rows_show_the_gutted_saving():
    rows = cost_rows()
    assert [r["model"] for r in rows] == ["Qwen3-VL-2B", "Qwen3-VL-4B", "Qwen3-VL-8B"]
    for r in rows:
        assert r["image_tokens_full"] == 196  # 448 px: 28x28 patches of 16, merged 2x2
        assert r["ratio"] > 10 and r["full_vision_gflops"] > 0
    with pytest.raises(ValueError, match="Unknown Qwen3-VL config 'nope'; valid: tiny"):
        analytic_flops("nope")
    with pytest.raises(ValueError, match="multiple of 32"):
        analytic_flops("Qwen3-VL-2B", resolution=100)


def test_measure_costs_times_both_scorers_interleaved(models):
    import numpy as np

    from models.cost import counted_costs, measure_costs

    gutted, full = models
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(12, gutted.cfg.embed_dim)).astype(np.float32)
    pix = rng.integers(0, 256, (12, RES, RES, 3), dtype=np.uint8)
    q, c = np.array([0, 1]), np.array([[2, 3, 4, 5], [6, 7, 8, 9]])
    cost = measure_costs({"gutted": (gutted, emb), "full_vlm": (full, pix)}, q, c, repeats=3)
    for row in cost.values():
        lo, hi = row["ms_per_1k_candidates_range"]
        assert 0 < lo <= row["ms_per_1k_candidates"] <= hi and row["timing_repeats"] == 3
    assert cost["full_vlm"]["flops_per_candidate"] > cost["gutted"]["flops_per_candidate"]
    counted = counted_costs({"gutted": (gutted, emb), "full_vlm": (full, pix)}, q, c)
    for name, row in counted.items():  # the machine-independent part, identical, with no clock
        assert row == {k: cost[name][k] for k in ("flops_per_candidate", "tokens_per_candidate")}


def test_production_estimate_follows_the_trained_gutted_config():
    from models.gutted_vlm import GuttedConfig

    k4, k8 = (analytic_flops("Qwen3-VL-2B", gutted=GuttedConfig(num_tokens=k)) for k in (4, 8))
    assert (k4["image_tokens_gutted"], k8["image_tokens_gutted"]) == (4, 8)
    assert k8["gutted_gflops"] > k4["gutted_gflops"] and k8["full_gflops"] == k4["full_gflops"]


def test_sdpa_flops_count_grouped_query_keys_at_the_query_head_count():
    from torch.utils.flop_counter import sdpa_flop_count

    from models.cost import _sdpa_flop

    q, kv = (2, 4, 8, 32), (2, 2, 8, 32)  # 4 query heads share 2 key/value heads
    assert _sdpa_flop(q, kv, kv) == sdpa_flop_count(q, q, q) == 2 * 2 * 4 * 8 * 8 * 32 * 2


@pytest.mark.parametrize("pool", [0, 3])
def test_counted_flops_of_a_history_match_the_analytic_formula_with_or_without_a_pool(pool):
    """A user of H = 6 history images: the gutted model's prefix is 6 images and their mean,
    or with a history pool of m tokens, one image of m tokens (and the pool's own FLOPs)."""
    from models.gutted_vlm import GuttedConfig

    gutted = build_gutted(GuttedConfig(history_pool=pool))
    g = torch.Generator().manual_seed(1)
    hist, c = torch.randn(2, 6, 128, generator=g), torch.randn(2, 8, 128, generator=g)
    present = torch.ones(2, 6, dtype=torch.bool)
    a = analytic_flops("tiny", resolution=RES, gutted=gutted.cfg, question_tokens=len(gutted.question_ids),
                       cue_tokens=len(gutted.cue_ids), candidates_per_query=8, history=6)
    counted = flops_per_candidate(gutted, hist, c, history=present)
    assert counted == pytest.approx(a["gutted_gflops"] * 1e9, rel=0.1)
    prefix = (3 + 2) if pool else 7 * (4 + 2)
    assert tokens_per_candidate(gutted, 8, history=6)["per_candidate_cache"] == pytest.approx(
        (4 + 2) + 2 + 2 + (prefix + len(gutted.question_ids)) / 8)  # image, prior + similarity, cue
