"""Reranker training: loss goes down, runs are deterministic, checkpoints hold only trained
tensors and rebuild the same scorer."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch

from models.full_vlm import FullVLMConfig, build_full_vlm
from models.gutted_vlm import GuttedConfig, build_gutted
from models.rerankers import load_reranker, save_reranker
from models.scoring import score_candidates
from models.train_reranker import (
    RerankerTrainConfig,
    evaluate,
    train_reranker,
)

D = 16
SMALL = GuttedConfig(embed_dim=D, proj_hidden=32, num_tokens=2)


def _data(n=48, n_groups=24, n_train=16, n_neg=3, seed=0):
    """Items whose relevance is a shared label; the label is visible in the embedding."""
    rng = np.random.default_rng(seed)
    label = rng.integers(4, size=n)
    centers = rng.normal(size=(4, D))
    emb = (centers[label] + 0.3 * rng.normal(size=(n, D))).astype(np.float32)
    groups = []
    for q in rng.permutation(n)[:n_groups]:
        pos = rng.choice(np.flatnonzero((label == label[q]) & (np.arange(n) != q)))
        neg = rng.choice(np.flatnonzero(label != label[q]), n_neg, replace=False)
        groups.append([q, pos, *neg])
    groups = np.asarray(groups, dtype=np.int64)
    return emb, groups[:n_train], groups[n_train:]


FAST = RerankerTrainConfig(stage1_epochs=2, stage2_epochs=1, batch_groups=4, lr=5e-3, patience=5)


def test_training_lowers_loss_and_reports_metrics():
    emb, train, val = _data()
    events = []
    m = train_reranker(build_gutted(SMALL), emb, train, val, FAST, progress=events.append)
    losses = [c["loss"] for c in m["loss_curve"]]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    assert {"best_val_ndcg10", "val_curve", "trained_params", "seconds"} <= set(m)
    assert 0 <= m["best_val_ndcg10"] <= 1 and m["trained_params"] > 0
    assert events[0]["event"] == "eval" and events[-1]["event"] == "done"
    assert any(c["stage"] == 2 for c in m["val_curve"])


def test_progress_events_say_where_training_is_and_what_is_left():
    import dataclasses

    from models.progress import progress_line

    emb, train, val = _data()
    events = []
    cfg = dataclasses.replace(FAST, progress_seconds=0.0)  # a step event after every step
    m = train_reranker(build_gutted(SMALL), emb, train, val, cfg, progress=events.append)
    steps = [e for e in events if e["event"] == "step"]
    assert steps and all(e["total"] == steps[0]["total"] >= e["step"] for e in steps)
    # FAST's patience (5) is more than its evaluations (one per epoch, 3 epochs): no stage stops
    # early, so the announced total is exactly the steps run
    assert steps[0]["total"] == m["steps"] == steps[-1]["total"]
    assert [e["elapsed"] for e in events if "elapsed" in e] == sorted(e["elapsed"] for e in events if "elapsed" in e)
    line = progress_line(next(e for e in events if e["event"] == "eval" and e["step"] > 0))
    assert re.match(r"stage 1 epoch 1/2 step \d+/\d+ loss \d+\.\d{4} val NDCG@10 [01]\.\d{3} · 0:\d\d", line), line
    assert line.endswith(" left") or line.endswith("done")
    assert progress_line(events[-1]).startswith("done in 0:")


def test_progress_line_formats_position_time_and_estimate():
    from models.progress import clock, progress_line, time_left

    assert clock(130) == "2:10" and clock(3725) == "1:02:05"
    assert time_left(40, 250, 130.0) == "~11 min left" and time_left(200, 250, 100.0) == "~25 s left"
    assert time_left(0, 10, 5.0) == "estimating" and time_left(10, 10, 5.0) == "done"
    line = progress_line({"event": "eval", "stage": 2, "epoch": 0, "epochs": 2, "step": 40, "total": 250,
                          "train_loss": 0.41234, "val_ndcg10": 0.5712, "elapsed": 130.0})
    assert line == "stage 2 epoch 1/2 step 40/250 loss 0.4123 val NDCG@10 0.571 · 2:10 · ~11 min left"
    assert progress_line({"step": 10, "total": 256, "loss": 32.47}) == "step 10/256 loss 32.4700"


def test_a_throttled_progress_logs_at_most_every_interval_and_at_the_end():
    from models.progress import throttled

    lines = []
    update = throttled(lines.append, "full VLM, queries scored", every=3600)
    for done in range(8, 401, 8):
        update(done, 400)
    assert lines == [lines[-1]] and lines[-1].startswith("full VLM, queries scored: 400/400 · 0:00 · done")
    every_call = []
    update = throttled(every_call.append, "x", every=0)
    for done in (1, 2, 3):
        update(done, 3)
    assert [line.split(" · ")[0] for line in every_call] == ["x: 1/3", "x: 2/3", "x: 3/3"]


def test_training_is_deterministic():
    emb, train, val = _data(n_groups=12, n_train=8)
    cfg = RerankerTrainConfig(stage1_epochs=1, stage2_epochs=1, batch_groups=4, device="cpu")
    runs = []
    for _ in range(2):
        model = build_gutted(SMALL)
        m = train_reranker(model, emb, train, val, cfg)
        runs.append((m["loss_curve"], evaluate(model, emb, val)["scores"]))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_checkpoint_holds_only_trained_tensors_and_round_trips(tmp_path):
    from safetensors import safe_open

    emb, train, val = _data(n_groups=12, n_train=8)
    model = build_gutted(SMALL)
    cfg = RerankerTrainConfig(stage1_epochs=1, stage2_epochs=1, batch_groups=8, lr=5e-3)
    train_reranker(model, emb, train, val, cfg)
    save_reranker(model, tmp_path / "ckpt")
    with safe_open(str(tmp_path / "ckpt" / "weights.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith(("projector.", "prior.", "similarity.")) or "lora_" in k for k in keys), keys
    assert any("lora_" in k for k in keys)
    loaded = load_reranker(tmp_path / "ckpt")
    np.testing.assert_allclose(
        evaluate(loaded, emb, val)["scores"],
        evaluate(model, emb, val)["scores"],
        rtol=1e-5,
        atol=1e-6,
    )


def test_load_refuses_a_changed_base(tmp_path):
    from models.full_vlm import write_tiny_checkpoint

    base = write_tiny_checkpoint(tmp_path / "base")
    model = build_gutted(GuttedConfig(base=str(base), embed_dim=D, proj_hidden=32))
    save_reranker(model, tmp_path / "ckpt")
    cfg = (
        (base / "config.json")
        .read_text()
        .replace('"tie_word_embeddings": true', '"tie_word_embeddings": true ')
    )
    (base / "config.json").write_text(cfg)
    with pytest.raises(ValueError, match="base model changed"):
        load_reranker(tmp_path / "ckpt")


def test_full_vlm_trains_with_the_same_loop(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
    groups = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]])
    model = build_full_vlm(FullVLMConfig(resolution=32))
    m = train_reranker(
        model, pixels, groups, groups, RerankerTrainConfig(stage1_epochs=1, stage2_epochs=1, batch_groups=2)
    )
    assert m["steps"] == 4 and np.isfinite([c["loss"] for c in m["loss_curve"]]).all()
    assert m["trained_params"] == sum(p.numel() for p in model.stage1_parameters()) + sum(
        p.numel() for n, p in model.lm.named_parameters() if "lora_" in n
    )
    save_reranker(model, tmp_path / "full")
    loaded = load_reranker(tmp_path / "full")
    assert loaded.kind == "full_vlm" and loaded.cfg.resolution == 32
    np.testing.assert_allclose(
        evaluate(loaded, pixels, groups)["scores"],
        evaluate(model, pixels, groups)["scores"],
        rtol=1e-5,
        atol=1e-6,
    )


def test_bad_inputs_are_clear_errors():
    emb, train, val = _data()
    model = build_gutted(SMALL)
    with pytest.raises(ValueError, match="groups must be an int array"):
        train_reranker(model, emb, train[:, :2], val)
    with pytest.raises(ValueError, match="out of range"):
        train_reranker(model, emb, train + 1000, val)
    with pytest.raises(ValueError, match=f"dimension {D}"):
        train_reranker(model, np.zeros((48, D + 1), np.float32), train, val)
    with pytest.raises(ValueError, match="batch_groups"):
        train_reranker(model, emb, train, val, RerankerTrainConfig(batch_groups=0))
    for knob in ("patience", "evals_per_epoch"):  # at 0 the model would come back untrained
        with pytest.raises(ValueError, match=f"{knob} must be >= 1, got 0"):
            train_reranker(model, emb, train, val, RerankerTrainConfig(**{knob: 0}))


def test_scores_do_not_depend_on_candidate_order():
    emb, _, val = _data()
    model = build_gutted(SMALL)
    q, c = torch.from_numpy(emb[val[:, 0]]), torch.from_numpy(emb[val[:, 1:]])
    with torch.no_grad():
        a = model.score(q, c)
        b = model.score(q, c.flip(1)).flip(1)
    torch.testing.assert_close(a, b)


def test_the_engagement_prior_is_learned_when_the_images_say_nothing():
    """Embeddings are noise; only the candidates' engagement buckets separate the positive
    (bucket 6) from the negatives (bucket 1). Train and validation use disjoint images, so
    nothing about an image itself can be memorised. Trained with the prior, the model finds
    it; the same model without it stays near chance."""
    rng = np.random.default_rng(0)
    n, n_neg = 128, 3
    emb = rng.normal(size=(n, D)).astype(np.float32)
    prior = np.ones(n, dtype=np.int64)
    prior[:32] = 6  # images 0-31 are popular: 0-15 train positives, 16-31 validation ones

    def groups(popular, rest, count):
        return np.asarray([[q, p, *rng.choice(rest[rest != q], n_neg, replace=False)]
                           for q, p in zip(rng.choice(rest, count), rng.choice(popular, count), strict=True)])

    train = groups(np.arange(0, 16), np.arange(32, 80), 28)
    val = groups(np.arange(16, 32), np.arange(80, 128), 16)
    cfg = RerankerTrainConfig(stage1_epochs=6, stage2_epochs=0, batch_groups=4, lr=1e-2, patience=6)
    with_prior = build_gutted(SMALL)
    m = train_reranker(with_prior, emb, train, val, cfg, prior=prior)
    chance = evaluate(with_prior, emb, val, prior=np.zeros(n, np.int64))["ndcg"]
    assert m["best_val_ndcg10"] > 0.95
    assert evaluate(with_prior, emb, val, prior=prior)["ndcg"] > chance + 0.2
    without = train_reranker(build_gutted(GuttedConfig(**{**SMALL.__dict__, "prior_buckets": 0})), emb, train, val, cfg)
    assert without["best_val_ndcg10"] < 0.85


def test_prior_buckets_are_log2_and_capped():
    from models.rerank_head import prior_bucket

    assert prior_bucket([0, 1, 2, 3, 4, 7, 8, 10**9]).tolist() == [0, 1, 1, 2, 2, 3, 3, 15]
    assert prior_bucket([5], buckets=2).tolist() == [1]


def test_a_checkpoint_saved_without_the_prior_loads_without_it(tmp_path):
    import json

    model = build_gutted(GuttedConfig(**{**SMALL.__dict__, "prior_buckets": 0}))
    save_reranker(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["config"]["model"]["prior_buckets"]  # as written before the prior existed
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    loaded = load_reranker(tmp_path / "m")
    assert loaded.prior is None and loaded.suffix_tokens() == 1  # the similarity token only


def test_a_checkpoint_saved_before_the_similarity_token_scores_as_it_was_trained(tmp_path):
    import json

    model = build_gutted(GuttedConfig(**{**SMALL.__dict__, "similarity_token": False}))
    save_reranker(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["config"]["model"]["similarity_token"]  # as written before the token existed
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    loaded = load_reranker(tmp_path / "m")
    q, c = torch.randn(2, SMALL.embed_dim), torch.randn(2, 3, SMALL.embed_dim)
    assert loaded.similarity is None
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(q, c), model.eval().score(q, c))


def test_a_checkpoint_saved_before_the_cue_keeps_its_question_after_the_candidate(tmp_path):
    """Checkpoints written before the question moved into the cached prefix lack `cue`: they
    load with their whole question after every candidate, the layout they were trained on,
    and score exactly as a model built that way."""
    import json

    from models.rerank_head import DEFAULT_QUESTION

    old = GuttedConfig(**{**SMALL.__dict__, "question": DEFAULT_QUESTION + " Answer:", "cue": ""})
    model = build_gutted(old)
    save_reranker(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["config"]["model"]["cue"]  # as written before the cue existed
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    loaded = load_reranker(tmp_path / "m")
    assert loaded.cfg.cue == "" and loaded.text_tokens() == (0, len(model.question_ids))
    emb, _, _ = _data()
    q, c = torch.as_tensor(emb[:2]), torch.as_tensor(emb[2:8]).reshape(2, 3, -1)
    torch.testing.assert_close(loaded.score(q, c), model.score(q, c))
    assert build_gutted(SMALL).text_tokens() == (len(build_gutted(SMALL).question_ids), 2)  # today's layout


def test_the_sequential_peer_learns_a_users_taste_from_the_history_order_and_round_trips(tmp_path):
    """Users' histories come from one of 4 clusters, and their targets are images of the
    cluster of their MOST RECENT history images; older images are from another cluster.
    The peer trains with the same loop (stage 1 only) and must beat chance clearly."""
    from models.sequential import SequentialConfig, build_sequential

    rng = np.random.default_rng(1)
    label = np.repeat(np.arange(4), 30)
    centers = rng.normal(size=(4, D))
    emb = (centers[label] + 0.3 * rng.normal(size=(120, D))).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    users, groups = [], []
    for u in range(80):
        old, new = rng.choice(4, 2, replace=False)
        hist = [*rng.choice(np.flatnonzero(label == old), 3), *rng.choice(np.flatnonzero(label == new), 2)]
        users.append([-1, *hist])  # left padded to H = 6
        pos = rng.choice(np.setdiff1d(np.flatnonzero(label == new), hist))
        negs = rng.choice(np.flatnonzero(label != new), 3, replace=False)
        groups.append([u, pos, *negs])
    queries, groups = np.array(users), np.array(groups)
    cfg = RerankerTrainConfig(stage1_epochs=8, stage2_epochs=0, batch_groups=8, lr=3e-3, patience=8)
    peer = build_sequential(SequentialConfig(embed_dim=D, hidden=32))
    m = train_reranker(peer, emb, groups[:60], groups[60:], cfg, queries=queries)
    assert m["best_val_ndcg10"] > 0.85 > m["untrained_val_ndcg10"]
    save_reranker(peer, tmp_path / "peer")
    loaded = load_reranker(tmp_path / "peer")
    np.testing.assert_allclose(evaluate(loaded, emb, groups[60:], queries=queries)["scores"],
                               evaluate(peer, emb, groups[60:], queries=queries)["scores"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no language model"):
        train_reranker(peer, emb, groups[:60], groups[60:], RerankerTrainConfig(stage2_epochs=1), queries=queries)


def test_the_gutted_model_trains_on_user_histories():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(40, D)).astype(np.float32)
    queries = np.array([[-1, 1, 2], [3, 4, 5], [-1, -1, 6], [7, 8, 9]])
    groups = np.array([[u, 10 + u, 20, 21, 22] for u in range(4)])
    m = train_reranker(build_gutted(SMALL), emb, groups[:3], groups[3:], FAST, queries=queries)
    assert np.isfinite(m["best_val_ndcg10"]) and m["steps"] > 0
    with pytest.raises(ValueError, match=r"out of range \[0, 4\)"):  # column 0 indexes the 4 users
        train_reranker(build_gutted(SMALL), emb, groups + np.array([[4, 0, 0, 0, 0]]), groups, FAST, queries=queries)


def test_the_validation_metric_takes_each_groups_task_as_given():
    """A user whose history is one image still counts in the user half of the validation
    NDCG@10 (its prompt is laid out as a related-images query's)."""
    from models.train_reranker import task_balanced

    rng = np.random.default_rng(3)
    emb = rng.normal(size=(40, D)).astype(np.float32)
    queries = np.array([[-1, -1, 1], [-1, -1, 2], [-1, -1, 3], [4, 5, 6]])  # row 2: a one-image user
    groups = np.array([[q, 10 + q, 20, 21, 22] for q in range(4)])
    is_user = np.array([False, False, True, True])
    cfg = dataclasses.replace(FAST, stage1_epochs=0, stage2_epochs=0)
    m = train_reranker(build_gutted(SMALL), emb, groups, groups, cfg, queries=queries, val_is_user=is_user)
    per_group = evaluate(build_gutted(SMALL), emb, groups, queries=queries)["per_group"]
    assert m["untrained_val_ndcg10"] == pytest.approx(task_balanced(per_group, is_user))
    assert task_balanced(per_group, is_user) != pytest.approx(task_balanced(per_group, np.array([0, 0, 0, 1], bool)))
    with pytest.raises(ValueError, match="one flag per val group"):
        train_reranker(build_gutted(SMALL), emb, groups, groups, cfg, queries=queries, val_is_user=is_user[:3])


def test_validation_weighs_both_tasks_alike_whatever_their_share():
    from models.train_reranker import task_balanced

    per_group = np.array([1.0, 1.0, 1.0, 0.0])  # three related-images groups, one user group
    is_user = np.array([False, False, False, True])
    assert task_balanced(per_group, is_user) == 0.5  # not the plain mean, 0.75
    assert task_balanced(per_group, None) == task_balanced(per_group, np.zeros(4, bool)) == 0.75


@pytest.mark.parametrize("pool", [0, 2])
def test_a_query_image_has_one_prompt_however_its_rows_are_stored(pool):
    """Training stores a related-image query as a one-image history ([-1, ..., -1, q]);
    evaluation and serving pass it as one row. Both are the one-image prompt (no history
    summary, no pool), also when one-image queries and histories are scored together."""
    torch.manual_seed(0)
    model = build_gutted(GuttedConfig(embed_dim=16, history_pool=pool)).eval()
    feats = torch.nn.functional.normalize(torch.randn(30, 16), dim=-1)
    cands = np.arange(1, 31).reshape(3, 10) % 30
    flat = score_candidates(model, feats, np.array([0, 21, 7]), cands)
    stored = np.full((3, 20), -1)
    stored[:, -1] = [0, 21, 7]
    np.testing.assert_allclose(score_candidates(model, feats, stored, cands), flat, atol=1e-5)
    mixed = stored.copy()
    mixed[1, -3:] = [4, 5, 21]  # the second query is a user's three-image history
    scores = score_candidates(model, feats, mixed, cands, batch=8)
    np.testing.assert_allclose(scores[[0, 2]], flat[[0, 2]], atol=1e-5)
    assert np.abs(scores[1] - flat[1]).max() > 1e-3  # a history is not its latest image


class _Stop(Exception):
    """Stands for the process dying: raised from the progress callback."""


@pytest.mark.parametrize("stop_at", [("step", 2), ("eval", 3), ("eval", 5), ("step", 6)])  # stage 1: mid, its last eval; stage 2
def test_a_stopped_run_resumes_where_it_saved_and_ends_as_an_unstopped_one(tmp_path, stop_at):
    """Everything a run depends on is saved (trained tensors, optimizer, random generators,
    batch order, best state, curves), so a run stopped anywhere and resumed ends with the same
    weights and curves, bit for bit, as a run never stopped."""
    from models.rerankers import trained_state
    from models.resume import ProgressFile

    torch.manual_seed(0)  # LoRA dropout draws from torch's global generator
    emb, train, val = _data()
    cfg = dataclasses.replace(FAST, stage1_epochs=2, stage2_epochs=2, evals_per_epoch=2, lora_dropout=0.1,
                              progress_seconds=0.0, checkpoint_seconds=0.0)
    whole = build_gutted(SMALL)
    finished = ProgressFile(tmp_path / "a.safetensors")
    expected = train_reranker(whole, emb, train, val, cfg, progress_file=finished)
    assert expected["resumed_at_step"] is None

    kind, n = stop_at
    seen = []

    def stop(event):
        seen.append(event["event"])
        if seen.count(kind) == n:
            raise _Stop

    torch.manual_seed(0)
    progress = ProgressFile(tmp_path / "b.safetensors")
    with pytest.raises(_Stop):
        train_reranker(build_gutted(SMALL), emb, train, val, cfg, progress=stop, progress_file=progress)
    assert progress.path.exists()
    torch.manual_seed(123)  # whatever the new process's generators hold: the saved states win
    events = []
    resumed = build_gutted(SMALL)
    m = train_reranker(resumed, emb, train, val, cfg, progress=events.append, progress_file=progress)
    assert events[0]["event"] == "resumed" and m["resumed_at_step"] == events[0]["step"] > 0
    assert m["loss_curve"] == expected["loss_curve"] and m["val_curve"] == expected["val_curve"]
    assert m["steps"] == expected["steps"] and m["best_step"] == expected["best_step"]
    got, want = trained_state(resumed), trained_state(whole)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)

    # a run killed after training but before its model was saved: nothing left to train
    again = build_gutted(SMALL)
    m = train_reranker(again, emb, train, val, cfg, progress_file=finished)
    assert m["resumed_at_step"] == expected["steps"] and m["val_curve"] == expected["val_curve"]
    assert all(torch.equal(v, want[k]) for k, v in trained_state(again).items())


def test_a_progress_file_of_other_inputs_is_not_resumed(tmp_path):
    from models.resume import ProgressFile

    emb, train, val = _data()
    cfg = dataclasses.replace(FAST, stage1_epochs=1, stage2_epochs=0)
    progress = ProgressFile(tmp_path / "p.safetensors")

    def stop(event):
        if event["event"] == "eval" and event["step"] > 0:
            raise _Stop

    with pytest.raises(_Stop):
        train_reranker(build_gutted(SMALL), emb, train, val, cfg, progress=stop, progress_file=progress)
    other = dataclasses.replace(cfg, lr=cfg.lr / 2)  # other settings: a fresh run
    events = []
    m = train_reranker(build_gutted(SMALL), emb, train, val, other, progress=events.append, progress_file=progress)
    assert m["resumed_at_step"] is None and events[0] == {**events[0], "event": "eval", "step": 0}
    with pytest.raises(_Stop):
        train_reranker(build_gutted(SMALL), emb, train, val, cfg, progress=stop, progress_file=progress)
    changed = build_gutted(SMALL)  # the same settings on a base whose frozen weights changed since
    with torch.no_grad():
        next(p for n, p in changed.lm.named_parameters() if "lora_" not in n).add_(1e-3)
    m = train_reranker(changed, emb, train, val, cfg, progress_file=progress)
    assert m["resumed_at_step"] is None
    with pytest.raises(_Stop):
        train_reranker(build_gutted(SMALL), emb, train, val, cfg, progress=stop, progress_file=progress)
    assert train_reranker(build_gutted(SMALL), emb, train, val, cfg, progress_file=progress)["resumed_at_step"]
    progress.path.write_bytes(b"not a safetensors file")  # a damaged file: a fresh run, not a crash
    m = train_reranker(build_gutted(SMALL), emb, train, val, cfg, progress_file=progress)
    assert m["resumed_at_step"] is None
    progress.clear()
    assert not progress.path.exists()
