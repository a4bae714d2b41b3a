"""Cost per scored candidate: measured on this machine, and analytic for production sizes.

Measured (any scorer, gutted or full VLM, either KV-cache mode):
- `flops_per_candidate`: forward FLOPs from `torch.utils.flop_counter.FlopCounterMode`
  (matmuls, convolutions, attention) for B queries × C candidates, divided by B·C. Attention
  counts the full Lq × Lk rectangle, so it sits a little above the causal analytic count.
- `ms_per_1k_candidates`: best-of-N wall time of that scoring call, per 1,000 candidates.
- `tokens_per_candidate`: LLM tokens per image and per scored candidate.
- `counted_costs`: FLOPs and tokens (no clock) for several scorers on the same real inputs
  (rows of a feature table: raw pixels for the full VLM, so its vision tower is part of the
  cost); `measure_costs` adds their timings, interleaved (`models/timing.py`): the median and
  the range of the repeats.

Analytic (`analytic_flops`, `cost_rows`), forward FLOPs = 2 × multiply-accumulates:
- LLM, per token at absolute index t (0-based), summed over L layers:
  2·H·(nq·hd + 2·nkv·hd) [q, k, v] + 2·nq·hd·H [o] + 6·H·I [gated MLP] + 4·nq·hd·(t + 1)
  [scores and values over t + 1 keys]. The yes−no head adds 2·H.
- Prompt: prefix = T_img + 2 + q tokens (query image between vision markers, question),
  suffix = T_img + 2 + p + a tokens (candidate image, markers, p = 0 to 2 per-candidate
  tokens: the engagement prior's and the similarity token, where the model has them; the
  answer cue). With the KV cache the prefix runs once per query,
  so a candidate costs suffix + prefix / C; without it, prefix + suffix.
- Vision tower per image of R px: N = (R / p)^2 patches, T_img = N / m^2 LLM tokens;
  patch embed 2·N·(3·tp·p^2)·Hv; per block 2·N·4·Hv^2 + 4·N·Hv·Iv + 4·N^2·Hv; each of the
  1 + n_deepstack mergers 2·T_img·((m^2·Hv)^2 + m^2·Hv·H). The query image's tower runs once
  per query: a candidate pays its own image plus 1 / C of the query's (H / C for a user's
  history of H images, whose prefix is H · (T_img + 2) tokens).
- Gutted: T_img = k soft tokens from a projector MLP, 2·(d·h_p + h_p·k·H) per image, with k,
  d and h_p from the trained model's `GuttedConfig`. The in-house encoder is not counted: its
  embeddings are computed once at ingestion and reused by every query, like an index.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from models.device import synchronize
from models.gutted_vlm import GuttedConfig
from models.qwen3vl_configs import config_dims
from models.scoring import CANDIDATES, feature_tensor, prior_tensor, query_inputs
from models.timing import interleaved, summarise


# SDPA FLOPs, counted the same way for every backend (the full Lq × Lk rectangle, causal
# masking not subtracted). FlopCounterMode has no formula for the CPU flash-attention kernel,
# so attention would count as zero there; and with grouped-query attention some kernels (CPU
# flash on some torch versions, CUDA flash in bf16) receive keys and values with fewer heads
# than the query, which torch's own formula rejects. Each query head still attends over all
# keys, so count keys and values at the query's head count.
def _sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    heads = query_shape[1]
    key_shape = (key_shape[0], heads, *key_shape[2:])
    value_shape = (value_shape[0], heads, *value_shape[2:])
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_SDPA_OPS = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")  # fmt: skip
_SDPA = {getattr(torch.ops.aten, n): _sdpa_flop for n in _SDPA_OPS if hasattr(torch.ops.aten, n)}

PRODUCTION = ("Qwen3-VL-2B", "Qwen3-VL-4B", "Qwen3-VL-8B")


def flops_per_candidate(scorer, query_feats, cand_feats, use_cache: bool | None = None, prior=None,
                        history=None) -> float:
    """Counted forward FLOPs of scoring (B, C) candidates, divided by B·C."""
    counter = FlopCounterMode(display=False, custom_mapping=_SDPA)
    with torch.inference_mode(), counter:
        scorer.score(query_feats, cand_feats, use_cache=use_cache, prior=prior, history=history)
    return counter.get_total_flops() / cand_feats.shape[0] / cand_feats.shape[1]


def ms_per_1k_candidates(
    scorer,
    query_feats,
    cand_feats,
    use_cache: bool | None = None,
    repeats: int = 5,
    warmup: int = 1,
) -> float:
    """Wall milliseconds of one scoring call, scaled to 1,000 candidates: the best of
    `repeats` timed calls, the usual estimator on a shared machine (noise only adds time).
    On a GPU the clock stops after the queued kernels finish."""
    n = cand_feats.shape[0] * cand_feats.shape[1]
    times = interleaved({"score": scoring_call(scorer, query_feats, cand_feats, use_cache)}, repeats=repeats,
                        warmup=warmup, sync=lambda: synchronize(cand_feats.device))["score"]
    return min(times) * 1000.0 * 1000.0 / n


def scoring_call(scorer, query_feats, cand_feats, use_cache: bool | None = None, prior=None, history=None):
    """A function of no arguments that scores the candidates once (what the timings time)."""
    def run():
        with torch.inference_mode():
            scorer.score(query_feats, cand_feats, use_cache=use_cache, prior=prior, history=history)
    return run


def tokens_per_candidate(scorer, candidates_per_query: int = CANDIDATES, history: float = 1) -> dict:
    """LLM tokens: per image, per prompt, and per candidate with and without the KV cache, for
    a query of `history` images (1: one query image)."""
    t_img = scorer.tokens_per_image()
    if t_img == 0:  # no language model (the sequential peer)
        return {"image_tokens": 0, "prompt_tokens": 0, "per_candidate_nocache": 0, "per_candidate_cache": 0}
    text_prefix, text_suffix = scorer.text_tokens()
    prefix = scorer.prefix_image_tokens(history) + text_prefix
    suffix = t_img + 2 + scorer.suffix_tokens() + text_suffix
    return {
        "image_tokens": t_img,
        "prompt_tokens": prefix + suffix,
        "per_candidate_nocache": prefix + suffix,
        "per_candidate_cache": suffix + prefix / candidates_per_query,
    }


def _cost_inputs(scorers: dict, query_rows, cand_rows, prior=None):
    """Per scorer (scorer, query tensor, history, candidate tensor, its query rows), and the
    candidates' prior tensor: what `counted_costs` and `measure_costs` score."""
    rows_of = {name: np.asarray(spec[2] if len(spec) > 2 else query_rows) for name, spec in scorers.items()}
    inputs = {name: (spec[0].eval(), *query_inputs(spec[1], rows_of[name]),
                     feature_tensor(spec[1][np.asarray(cand_rows)]), rows_of[name]) for name, spec in scorers.items()}
    return inputs, None if prior is None else prior_tensor(prior, cand_rows)


def _counted(scorer, q, h, c, rows, p) -> dict:
    return {"flops_per_candidate": flops_per_candidate(scorer, q, c, prior=p, history=h),
            "tokens_per_candidate": float(tokens_per_candidate(
                scorer, c.shape[1], (rows >= 0).sum() / len(rows))["per_candidate_cache"])}


def counted_costs(scorers: dict, query_rows, cand_rows, prior=None) -> dict[str, dict]:
    """The costs that do not depend on the machine: counted FLOPs and LLM tokens per candidate,
    for the same arguments as `measure_costs`."""
    inputs, p = _cost_inputs(scorers, query_rows, cand_rows, prior)
    return {name: _counted(*spec, p) for name, spec in inputs.items()}


def measure_costs(scorers: dict, query_rows, cand_rows, repeats: int = 5, prior=None) -> dict[str, dict]:
    """Cost of scoring the candidates `cand_rows` (Q, K) of `query_rows` (Q,) or histories
    (Q, H), for each `{name: (scorer, features)}` or `(scorer, features, its own query_rows)`
    (with the rows' engagement buckets `prior` (N,)): the `counted_costs`, and ms per 1,000
    candidates as the median of `repeats` timings interleaved across the scorers
    (`ms_per_1k_candidates_range`: their min and max), so that machine load hits every
    scorer alike."""
    inputs, p = _cost_inputs(scorers, query_rows, cand_rows, prior)
    n = int(np.asarray(cand_rows).size)
    device = next(iter(inputs.values()))[3].device
    times = interleaved({name: scoring_call(scorer, q, c, prior=p, history=h)
                         for name, (scorer, q, h, c, _) in inputs.items()},
                        repeats=repeats, sync=lambda: synchronize(device))
    out = {}
    for name, spec in inputs.items():
        ms = summarise(times[name], scale=1e6 / n)  # seconds per call -> ms per 1,000 candidates
        out[name] = {**_counted(*spec, p), "ms_per_1k_candidates": ms["median"],
                     "ms_per_1k_candidates_range": [ms["min"], ms["max"]], "timing_repeats": ms["repeats"]}
    return out


def _llm_flops(text: dict, start: int, n_tokens: int) -> float:
    """LLM forward FLOPs for tokens at absolute indices start .. start + n_tokens - 1."""
    h, hd, nq, nkv = (
        text["hidden_size"],
        text["head_dim"],
        text["num_attention_heads"],
        text["num_key_value_heads"],
    )
    linear = 2 * h * (nq * hd + 2 * nkv * hd) + 2 * nq * hd * h + 6 * h * text["intermediate_size"]
    keys = sum(t + 1 for t in range(start, start + n_tokens))
    return text["num_hidden_layers"] * (n_tokens * linear + 4 * nq * hd * keys)


def _vision_flops(vision: dict, out_hidden: int, resolution: int) -> tuple[float, int]:
    """Vision tower forward FLOPs for one square image, and the LLM tokens it yields."""
    p, m, tp = vision["patch_size"], vision["spatial_merge_size"], vision["temporal_patch_size"]
    if resolution % (p * m):
        raise ValueError(f"resolution must be a multiple of {p * m}, got {resolution}")
    hv, iv, n = vision["hidden_size"], vision["intermediate_size"], (resolution // p) ** 2
    t_img = n // m**2
    embed = 2 * n * (3 * tp * p * p) * hv
    block = 2 * n * 4 * hv * hv + 4 * n * hv * iv + 4 * n * n * hv
    mergers = (
        (1 + len(vision["deepstack_visual_indexes"]))
        * 2
        * t_img
        * ((m * m * hv) ** 2 + m * m * hv * out_hidden)
    )
    return embed + vision["depth"] * block + mergers, t_img


def analytic_flops(
    name: str,
    resolution: int = 448,
    gutted: GuttedConfig | None = None,
    question_tokens: int = 9,
    cue_tokens: int = 2,
    candidates_per_query: int = CANDIDATES,
    use_cache: bool = True,
    history: int = 1,
) -> dict:
    """Forward FLOPs per scored candidate for a named Qwen3-VL: full VLM vs a gutted model of
    `gutted`'s k, d and projector width (default: `GuttedConfig()`), see the module doc.
    `question_tokens` and `cue_tokens` are the question's and the cue's lengths in Qwen's
    tokenizer (`cue_tokens=0`: the older layout, the question after every candidate);
    `history` is the number of query images (a user's history; 1 for related images), the
    same for both models; with `gutted.history_pool` = m > 0 the gutted model reads it as m
    pooled tokens."""
    gutted = gutted or GuttedConfig()
    num_tokens, embed_dim, proj_hidden = gutted.num_tokens, gutted.embed_dim, gutted.proj_hidden
    # both models read the same per-candidate tokens: the prior's and the similarity token
    extra = int(gutted.prior_buckets > 0) + int(gutted.similarity_token)
    if num_tokens < 1:
        raise ValueError(f"num_tokens (k) must be >= 1, got {num_tokens}")
    dims = config_dims(name)
    text, c = dims["text"], candidates_per_query
    vision, t_full = _vision_flops(dims["vision"], text["hidden_size"], resolution)

    images = history + (history > 1 and gutted.history_summary)  # a history ends with its summary image
    pool = gutted.history_pool
    pooled = history > 1 and pool > 0  # the gutted model's history: m pooled tokens

    def per_candidate(t_img: int, prefix_image_tokens: float) -> float:
        text_prefix, text_suffix = (question_tokens, cue_tokens) if cue_tokens else (0, question_tokens)
        prefix, suffix = prefix_image_tokens + text_prefix, t_img + 2 + extra + text_suffix
        pre = _llm_flops(text, 0, prefix)
        post = _llm_flops(text, prefix, suffix) + 2 * text["hidden_size"]
        return post + (pre / c if use_cache else pre)

    per_image_proj = 2 * (embed_dim * proj_hidden + proj_hidden * num_tokens * text["hidden_size"])
    full_llm = per_candidate(t_full, images * (t_full + 2))
    gut_llm = per_candidate(num_tokens, pool + 2 if pooled else images * (num_tokens + 2))
    full = {"vision": vision * (1 + history / c), "llm": full_llm}
    gutted = {"projector": per_image_proj * (1 + history / c), "llm": gut_llm}
    if pooled:  # keys of the H x k history tokens, m queries' scores and mixtures, once per user
        hk, h = history * num_tokens, text["hidden_size"]
        gutted["history_pool"] = (2 * hk * h * h + 4 * pool * hk * h) / c
    full_total, gut_total = sum(full.values()), sum(gutted.values())
    return {
        "model": name,
        "resolution": resolution,
        "history": history,
        "image_tokens_full": t_full,
        "image_tokens_gutted": num_tokens,
        "full_vision_gflops": full["vision"] / 1e9,
        "full_llm_gflops": full["llm"] / 1e9,
        "full_gflops": full_total / 1e9,
        "gutted_gflops": gut_total / 1e9,
        "ratio": full_total / gut_total,
        "ratio_llm_only": full["llm"] / gutted["llm"],
    }


def cost_rows(names=PRODUCTION, **kwargs) -> list[dict]:
    """One `analytic_flops` row per named config, ready for a markdown table."""
    return [analytic_flops(n, **kwargs) for n in names]
