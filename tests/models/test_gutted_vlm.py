"""Gutted VLM: loads only language-model tensors, matches the full model, scores sanely."""

from __future__ import annotations

import inspect
import json
import tempfile

import pytest
import torch

import models.gutted_vlm as gv
from models.full_vlm import write_tiny_checkpoint
from models.gutted_vlm import GuttedConfig, build_gutted
from models.prompt_blocks import concat, pack_left, repeat_rows, run_lm, text_positions
from models.qwen3vl_configs import qwen3vl_config
from models.tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("qwen3vl") / "tiny", seed=1)


def _inputs(b=2, c=3, d=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randn(b, c, d, generator=g)


class _Recorder:
    """Wraps safe_open and records every tensor name requested."""

    def __init__(self, real):
        self.real, self.requested = real, []

    def __call__(self, *args, **kwargs):
        rec, handle = self, self.real(*args, **kwargs)

        class Proxy:
            def __enter__(self):
                self.f = handle.__enter__()
                return self

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

            def keys(self):
                return self.f.keys()

            def get_tensor(self, name):
                rec.requested.append(name)
                return self.f.get_tensor(name)

            def get_slice(self, name):
                rec.requested.append(name)
                return self.f.get_slice(name)

        return Proxy()


def test_default_tiny_forward_shape_and_no_nan():
    model = build_gutted()
    q, c = _inputs()
    s = model.score(q, c)
    assert s.shape == (2, 3) and torch.isfinite(s).all()


def test_checkpoint_reads_no_vision_tensor(ckpt, monkeypatch):
    rec = _Recorder(gv.safe_open)
    monkeypatch.setattr(gv, "safe_open", rec)
    model = build_gutted(GuttedConfig(base=str(ckpt)))
    assert rec.requested, "nothing was read"
    assert all(k.startswith("model.language_model.") for k in rec.requested), rec.requested
    assert not any("visual" in k for k in rec.requested)
    assert model.base_identity["source"] == "checkpoint"


def test_sharded_checkpoint_and_untied_head(tmp_path, monkeypatch):
    from transformers import Qwen3VLForConditionalGeneration

    cfg = qwen3vl_config("tiny")
    cfg.tie_word_embeddings = False
    torch.manual_seed(0)
    full = Qwen3VLForConditionalGeneration(cfg)
    full.save_pretrained(str(tmp_path), max_shard_size="200KB")
    build_tiny_tokenizer().save(str(tmp_path / "tokenizer.json"))
    assert (tmp_path / "model.safetensors.index.json").exists()
    rec = _Recorder(gv.safe_open)
    monkeypatch.setattr(gv, "safe_open", rec)
    model = build_gutted(GuttedConfig(base=str(tmp_path)))
    assert "lm_head.weight" in rec.requested
    assert not any("visual" in k for k in rec.requested)
    tok = model.tokenizer
    yes, no = tok.token_to_id("▁yes"), tok.token_to_id("▁no")
    expect = full.lm_head.weight[yes] - full.lm_head.weight[no]
    torch.testing.assert_close(model.head_vec, expect.detach())


def _without(directory, drop, out):
    """A copy of checkpoint `directory` in `out` without the tensors `drop(name)` selects."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(directory, out)
    tensors = load_file(str(out / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if not drop(k)}, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_a_partial_checkpoint_is_refused_not_filled_at_random(ckpt, tmp_path):
    """Missing tensors would be initialised at random (unseeded, so a reloaded model differs
    from the trained one): the full VLM without its vision tower, an untied head without
    lm_head.weight."""
    from models.full_vlm import FullVLMConfig, build_full_vlm

    no_tower = _without(ckpt, lambda k: k.startswith("model.visual."), tmp_path / "no-tower")
    with pytest.raises(ValueError, match=r"lacks \d+ of the model's tensors \(e.g. model.visual"):
        build_full_vlm(FullVLMConfig(base=str(no_tower)))
    untied = _without(ckpt, lambda k: k == "lm_head.weight", tmp_path / "untied")
    config = json.loads((untied / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (untied / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unties its output embeddings .* holds no lm_head.weight"):
        build_gutted(GuttedConfig(base=str(untied)))


def test_hidden_states_and_score_match_full_model(ckpt):
    from transformers import Qwen3VLForConditionalGeneration

    model = build_gutted(GuttedConfig(base=str(ckpt)))
    full = Qwen3VLForConditionalGeneration.from_pretrained(str(ckpt)).eval()
    q, c = _inputs()
    with torch.no_grad():
        scores = model.score(q, c, use_cache=False)
        sim = model.candidate_similarity(q, c.reshape(6, -1), len(q), None)
        prefix, suffix = model.prompt_blocks(model.encode(q), model.encode(c.reshape(6, -1)), similarity=sim)
        block = concat(repeat_rows(prefix, 3), suffix)
        mine = run_lm(model.lm, block)
        ref = full.model.language_model(
            inputs_embeds=block.embeds, attention_mask=block.mask, position_ids=block.pos
        ).last_hidden_state
        torch.testing.assert_close(mine, ref)
        logits = full(
            inputs_embeds=block.embeds, attention_mask=block.mask, position_ids=block.pos
        ).logits[:, -1]  # (B*C, V): the full-vocabulary path
    yes, no = model.tokenizer.token_to_id("▁yes"), model.tokenizer.token_to_id("▁no")
    torch.testing.assert_close(scores.reshape(-1), logits[:, yes] - logits[:, no])


def test_kv_cache_matches_no_cache():
    model = build_gutted()
    q, c = _inputs(b=3, c=4)
    with torch.no_grad():
        a, b = model.score(q, c, use_cache=False), model.score(q, c, use_cache=True)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_kv_cache_only_where_it_pays(monkeypatch):
    """The default uses the cache from `cache_min_candidates` candidates per query; explicit wins."""
    model = build_gutted(GuttedConfig(cache_min_candidates=4)).eval()
    seen = []
    original = type(model).score_tokens
    monkeypatch.setattr(type(model), "score_tokens", lambda self, q, c, n, use_cache, *rest: seen.append(use_cache)
                        or original(self, q, c, n, use_cache, *rest))
    for n_cand in (3, 4):
        model.score(*_inputs(c=n_cand))
    model.score(*_inputs(c=3), use_cache=True)
    assert seen == [False, True, True]
    assert not build_gutted(GuttedConfig(use_kv_cache=False)).uses_cache(100)


def test_an_ignored_kv_cache_is_an_error_not_wrong_scores(monkeypatch):
    """transformers renamed the text model's cache argument (past_key_values -> cache); a
    wrong name is swallowed by **kwargs, and scoring must fail rather than drop the prefix."""
    import models.prompt_blocks as prompt_blocks

    model = build_gutted()
    q, c = _inputs(b=2, c=3)
    name = prompt_blocks._cache_kwarg(type(model.lm))
    assert name in inspect.signature(type(model.lm).forward).parameters
    monkeypatch.setattr(prompt_blocks, "_cache_kwarg", lambda _t: "not_a_cache_argument")
    with torch.no_grad(), pytest.raises(RuntimeError, match="did not fill the KV cache"):
        model.score(q, c, use_cache=True)


def test_kv_cache_gradients_match_no_cache():
    model = build_gutted()
    q, c = _inputs(b=2, c=3)
    grads = []
    for cache in (False, True):
        model.zero_grad()
        model.score(q, c, use_cache=cache).pow(2).sum().backward()
        grads.append([p.grad.clone() for p in model.projector.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_left_padding_matches_unpadded_rows():
    model = build_gutted()
    emb = model.lm.embed_tokens(torch.arange(5, 20)).detach()  # (15, H)
    rows = [{"embeds": emb[:n], "pos": text_positions(n), "next_pos": n} for n in (4, 9, 15)]
    with torch.no_grad():
        batched = run_lm(model.lm, pack_left(rows))[:, -1]
        single = torch.cat([run_lm(model.lm, pack_left([r]))[:, -1] for r in rows])
    assert torch.isfinite(batched).all()
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_num_tokens_configurable():
    model = build_gutted(GuttedConfig(num_tokens=2, embed_dim=16, proj_hidden=32))
    q, c = _inputs(d=16)
    assert model.score(q, c).shape == (2, 3)
    assert model.encode(q).embeds.shape == (2, 2, model.lm.config.hidden_size)


def test_bad_k_is_a_clear_error():
    with pytest.raises(ValueError, match="num_tokens.*got 0"):
        build_gutted(GuttedConfig(num_tokens=0))


def test_embedding_dimension_mismatch_is_a_clear_error():
    model = build_gutted()
    q, c = _inputs(d=64)
    with pytest.raises(ValueError, match="dimension 128.*64"):
        model.score(q, c)


def test_checkpoint_without_language_model_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    save_file(
        {"model.visual.patch_embed.proj.weight": torch.zeros(2, 2)},
        str(tmp_path / "model.safetensors"),
    )
    (tmp_path / "config.json").write_text(json.dumps(qwen3vl_config("tiny").to_dict()))
    build_tiny_tokenizer().save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"no model\.language_model\.\* tensors"):
        build_gutted(GuttedConfig(base=str(tmp_path)))


def test_unknown_base_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match="tiny"):
        build_gutted(GuttedConfig(base=str(tmp_path / "nope")))


@pytest.mark.parametrize("cache", [False, True])
def test_bfloat16_scores_track_float32(cache):
    """A model cast to bf16 (GPU serving) takes float32 embeddings and scores like fp32."""
    model = build_gutted()
    q, c = _inputs(b=2, c=16)
    with torch.no_grad():
        ref = model.score(q, c, use_cache=cache)
        low = model.to(torch.bfloat16).score(q, c, use_cache=cache)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    err = (low.float() - ref).abs().max() / ref.abs().max()
    assert err < 0.1, err
    # ranking by the bf16 scores keeps most of the fp32 order
    assert torch.corrcoef(torch.stack([low.float().flatten(), ref.flatten()]))[0, 1] > 0.95


def test_the_prior_token_moves_scores_and_the_kv_cache_keeps_them():
    model = build_gutted().eval()
    q, c = _inputs(b=2, c=4)
    low, high = torch.zeros(2, 4, dtype=torch.long), torch.full((2, 4), 9)
    with torch.no_grad():
        a = model.score(q, c, prior=low, use_cache=False)
        torch.testing.assert_close(a, model.score(q, c, use_cache=False))  # no prior = bucket 0
        b = model.score(q, c, prior=high, use_cache=False)
        torch.testing.assert_close(b, model.score(q, c, prior=high, use_cache=True), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, b)
    assert model.suffix_tokens() == 2 and set(model.prompt_parameters()) <= set(model.stage1_parameters())


def test_the_similarity_token_reads_best_and_mean_cosine_to_the_present_history():
    """[best, mean] cosine of each candidate to the user's present history images (padding
    ignored); the token moves the scores, and a model without it has one token less."""
    model = build_gutted().eval()
    e = torch.eye(4, 128)  # orthonormal embeddings: cosines are 0 or 1
    hist = torch.stack([e[[3, 0, 1]], e[[3, 3, 2]]])  # user 0: images 0, 1; user 1: image 2
    present = torch.tensor([[False, True, True], [False, False, True]])
    cand = torch.stack([e[[0, 2]], e[[2, 3]]])
    sim = model.candidate_similarity(hist.flatten(0, 1), cand.flatten(0, 1), 2, present).view(2, 2, 2)
    torch.testing.assert_close(sim[0], torch.tensor([[1.0, 0.5], [0.0, 0.0]]))  # image 3 is padding
    torch.testing.assert_close(sim[1], torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    with torch.no_grad():
        scores = model.score(hist, cand, history=present)
        model.similarity.bias.add_(1.0)
        assert not torch.allclose(scores, model.score(hist, cand, history=present))
    plain = build_gutted(GuttedConfig(similarity_token=False))
    assert plain.similarity is None and plain.suffix_tokens() == 1


def test_a_history_prefix_scores_like_its_images_in_one_prompt_and_padding_changes_nothing():
    """A user of 3 history images, alone or beside a user of 1 (left padded), with or without
    the KV cache: the same scores. One history image is the related-images prompt (without
    the history's summary image)."""
    model = build_gutted(GuttedConfig(history_summary=False)).eval()
    g = torch.Generator().manual_seed(3)
    hist = torch.randn(2, 3, 128, generator=g)
    present = torch.tensor([[True, True, True], [False, False, True]])
    c = torch.randn(2, 4, 128, generator=g)
    with torch.no_grad():
        both = model.score(hist, c, history=present, use_cache=False)
        cached = model.score(hist, c, history=present, use_cache=True)
        alone = model.score(hist[:1], c[:1], history=present[:1], use_cache=False)
        one = model.score(hist[1:, 2], c[1:], use_cache=False)  # the padded user is one image
    torch.testing.assert_close(both, cached, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[:1], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=1e-5)
    order = torch.tensor([[True, True, True]])
    with torch.no_grad():  # the order of the history matters: it is a sequence
        flipped = model.score(hist[:1].flip(1), c[:1], history=order, use_cache=False)
    assert not torch.allclose(flipped, alone)


def test_the_history_summary_is_one_more_image_the_mean_of_the_present_ones():
    from models.prompt_blocks import ImageTokens, history_summary

    tokens = torch.arange(2 * 3 * 2 * 1, dtype=torch.float32).view(6, 2, 1)  # 2 users x 3 images x 2 tokens
    present = torch.tensor([[True, True, True], [False, True, True]])
    out = history_summary(ImageTokens(tokens), present).embeds.view(2, 4, 2, 1)
    torch.testing.assert_close(out[:, :3], tokens.view(2, 3, 2, 1))
    torch.testing.assert_close(out[0, 3], tokens.view(2, 3, 2, 1)[0].mean(0))
    torch.testing.assert_close(out[1, 3], tokens.view(2, 3, 2, 1)[1, 1:].mean(0))  # padding left out
    model = build_gutted().eval()
    q, c = torch.randn(1, 3, 128), torch.randn(1, 4, 128)
    with torch.no_grad():
        with_summary = model.score(q, c, history=torch.ones(1, 3, dtype=torch.bool))
        model.cfg.history_summary = False
        without = model.score(q, c, history=torch.ones(1, 3, dtype=torch.bool))
    assert not torch.allclose(with_summary, without)


def test_a_history_pool_reads_a_history_as_m_learned_tokens():
    """With `history_pool` = m the prefix is one image of m tokens, whatever the history's
    length: the untrained pool is the mean of the present images' tokens; padding changes
    nothing, the KV cache keeps the scores, the pool trains in stage 1 and survives a save."""
    from models.rerankers import load_reranker, save_reranker

    model = build_gutted(GuttedConfig(history_pool=3)).eval()
    assert set(model.history_pool.parameters()) <= set(model.stage1_parameters())
    g = torch.Generator().manual_seed(5)
    hist, c = torch.randn(2, 4, 128, generator=g), torch.randn(2, 5, 128, generator=g)
    present = torch.tensor([[True, True, True, True], [False, False, True, True]])
    with torch.no_grad():
        tokens = model.encode(hist.reshape(8, 128))
        pooled = model.history_pool(tokens, present).embeds  # (2, 3, H)
        mean = tokens.embeds.view(2, 4, 4, -1)[1, 2:].reshape(-1, tokens.embeds.shape[-1]).mean(0)
        torch.testing.assert_close(pooled[1], mean.expand(3, -1))
        both = model.score(hist, c, history=present, use_cache=False)
        cached = model.score(hist, c, history=present, use_cache=True)
        alone = model.score(hist[1:, 2:], c[1:], history=present[1:, 2:], use_cache=False)
    torch.testing.assert_close(both, cached, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=1e-5)
    assert model.prefix_image_tokens(20) == 3 + 2
    assert model.prefix_image_tokens(1) == model.cfg.num_tokens + 2  # related images: unchanged

    with torch.no_grad():  # a trained pool weighs tokens unequally, and the scores follow
        model.history_pool.key.weight.normal_(generator=g)
        model.history_pool.recency.normal_(generator=g)
        trained = model.score(hist, c, history=present)
        assert not torch.allclose(trained, both)
        assert not torch.allclose(model.history_pool(tokens, present).embeds[1, 0], mean)
    with tempfile.TemporaryDirectory() as d:
        save_reranker(model, d)
        again = load_reranker(d).eval()
    with torch.no_grad():
        torch.testing.assert_close(again.score(hist, c, history=present), trained)


def test_a_negative_history_pool_is_refused():
    with pytest.raises(ValueError, match="history_pool"):
        build_gutted(GuttedConfig(history_pool=-1))
