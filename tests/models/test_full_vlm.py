"""Full-VLM baseline: processor-exact patches, scores equal the HF forward's yes−no logits."""

from __future__ import annotations

import pytest
import torch

from models.full_vlm import FullVLMConfig, build_full_vlm, patchify, write_tiny_checkpoint
from models.tokenizer import single_token_id

RES = 64  # 4x4 merged grid = 16 LLM tokens per image: keeps the tests fast


@pytest.fixture(scope="module")
def model():
    return build_full_vlm(FullVLMConfig(resolution=RES))


def _pixels(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (*shape, RES, RES, 3), generator=g, dtype=torch.uint8)


def test_patchify_matches_qwen_processor():
    import numpy as np
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    img = np.random.default_rng(0).integers(0, 256, (RES, RES, 3), dtype=np.uint8)
    proc = Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=2, temporal_patch_size=2,
        image_mean=[0.5] * 3, image_std=[0.5] * 3, do_resize=False,
    )  # fmt: skip
    ref = proc(images=[img], return_tensors="pt")
    values, grid = patchify(torch.from_numpy(img)[None], RES, 16, 2, 2)
    torch.testing.assert_close(values, ref["pixel_values"].float())
    assert grid.tolist() == ref["image_grid_thw"].tolist()


def test_forward_shape_tokens_and_no_nan(model):
    s = model.score(_pixels(2), _pixels(2, 3, seed=1))
    assert s.shape == (2, 3) and torch.isfinite(s).all()
    assert model.tokens_per_image() == (RES // 32) ** 2
    assert (FullVLMConfig().resolution // 32) ** 2 == 49  # the default: 224 px -> 49 tokens


def test_score_equals_hf_forward_yes_no_logits(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "tiny", seed=2)
    # without the engagement prior and the similarity token, which the HF processor path
    # has no place for
    model = build_full_vlm(FullVLMConfig(base=str(ckpt), resolution=RES, prior_buckets=0, similarity_token=False))
    cfg = model.vlm.config
    q, c = _pixels(1), _pixels(1, 2, seed=3)
    with torch.no_grad():
        scores = model.score(q, c)
        t = model.tokens_per_image()
        img = [cfg.vision_start_token_id, *[cfg.image_token_id] * t, cfg.vision_end_token_id]
        # query image, question, candidate image, answer cue
        ids = torch.tensor([img + model.question_ids.tolist() + img + model.cue_ids.tolist()] * 2)
        values, grid = patchify(torch.stack([q[0], c[0, 0], q[0], c[0, 1]]), RES, 16, 2, 2)
        logits = model.vlm(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=values,
            image_grid_thw=grid,
            mm_token_type_ids=(ids == cfg.image_token_id).int(),
        ).logits[:, -1]  # the processor-style path: M-RoPE and deepstack computed by HF
    yes, no = single_token_id(model.tokenizer, " yes"), single_token_id(model.tokenizer, " no")
    torch.testing.assert_close(scores[0], logits[:, yes] - logits[:, no], atol=1e-5, rtol=1e-4)


def test_cache_and_prepared_states_match_pixels(model):
    q, c = _pixels(2, seed=4), _pixels(2, 3, seed=5)
    with torch.no_grad():
        base = model.score(q, c, use_cache=False)
        cached = model.score(q, c, use_cache=True)
        prepared = model.score(
            model.prepare_features(q),
            model.prepare_features(c.reshape(6, RES, RES, 3)).view(2, 3, 2, 16, -1),
        )
    torch.testing.assert_close(cached, base, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prepared, base, atol=1e-5, rtol=1e-5)


def test_stage1_parameters_are_the_mergers_the_prior_and_the_similarity_token(model):
    names = {
        n for n, p in model.named_parameters() if any(p is q for q in model.stage1_parameters())
    }
    prompt = {"prior.weight", "similarity.weight", "similarity.bias"}
    assert prompt <= names and all("merger" in n for n in names - prompt)


def test_the_similarity_token_compares_the_frozen_towers_views(model):
    """The full VLM's similarity reads its own untrained view of the images: an image is
    its own best match, and the same pixels score the same whether given raw or prepared."""
    q = _pixels(1, seed=8)
    c = torch.cat([q, _pixels(2, seed=9)])[None]  # candidate 0 is the query itself
    sim = model.candidate_similarity(model.prepare_features(q), model.prepare_features(c[0]), 1, None)
    assert sim.shape == (3, 2)
    torch.testing.assert_close(sim[0], torch.ones(2))
    assert (sim[1:, 0] < 1 - 1e-4).all() and torch.equal(sim[:, 0], sim[:, 1])  # one image: best = mean


def test_named_config_shares_the_gutted_language_model(model):
    from models.gutted_vlm import build_gutted

    gutted = build_gutted()  # same default seed
    for name, tensor in gutted.lm.state_dict().items():
        torch.testing.assert_close(model.lm.state_dict()[name], tensor, rtol=0, atol=0)
    torch.testing.assert_close(model.head_vec, gutted.head_vec)


def test_bad_resolution_and_bad_pixels_are_clear_errors(model):
    with pytest.raises(ValueError, match="multiple of 32.*got 100"):
        build_full_vlm(FullVLMConfig(resolution=100))
    with pytest.raises(ValueError, match="uint8 pixels"):
        model.score(torch.rand(2, RES, RES, 3), _pixels(2, 3))


def test_bfloat16_scores_track_float32(model):
    """The whole VLM cast to bf16 takes uint8 pixels and scores like fp32."""
    import copy

    q, c = _pixels(2), _pixels(2, 3, seed=1)
    with torch.no_grad():
        ref = model.score(q, c)
        low = copy.deepcopy(model).to(torch.bfloat16).score(q, c)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() / ref.abs().max() < 0.1


def test_a_pixel_history_keeps_deepstack_aligned_with_and_without_the_cache(model):
    hist = _pixels(2 * 2, seed=6).view(2, 2, RES, RES, 3)
    present = torch.tensor([[True, True], [False, True]])
    c = _pixels(2, 3, seed=7)
    with torch.no_grad():
        base = model.score(hist, c, history=present, use_cache=False)
        cached = model.score(hist, c, history=present, use_cache=True)  # with the summary image
        torch.testing.assert_close(cached, base, atol=1e-5, rtol=1e-5)
        model.cfg.history_summary = False
        try:
            plain = model.score(hist, c, history=present, use_cache=True)
            one = model.score(hist[1:, 1], c[1:], use_cache=False)  # the padded user is one image
        finally:
            model.cfg.history_summary = True
    torch.testing.assert_close(plain[1:], one, atol=1e-5, rtol=1e-5)
