"""Unit tests for the image encoder, its augmentations, training, streaming and metrics (CPU, tiny)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.augment import AugmentConfig, augment
from models.embed import embed_pixels, iter_embeddings
from models.embedding_eval import coengagement_recall_at_k, knn_label_precision, pixel_baseline
from models.encoder import ImageEncoder, encoder_config, encoder_names
from models.train_encoder import EncoderTrainConfig, contrastive_loss, train_encoder


def _pixels(n: int = 64, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two visually distinct classes: dark images with a bright square, bright ones with a dark bar."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    x = rng.integers(0, 60, (n, size, size, 3)).astype(np.uint8)
    x[labels == 1] += 150
    q = size // 4
    x[labels == 0, q : 2 * q, q : 2 * q] = 250
    x[labels == 1, :, q : q + 2] = 10
    return x, labels


def _tiny_train(**kw) -> EncoderTrainConfig:
    return EncoderTrainConfig(
        **{"epochs": 100, "max_steps": 3, "batch_size": 32, "warmup_steps": 1, "device": "cpu", **kw}
    )


@pytest.mark.parametrize("name", encoder_names())
def test_every_registered_encoder_forward(name):
    cfg = encoder_config(name)
    model = ImageEncoder(cfg).eval()
    x = torch.randint(0, 256, (3, 40, 40, 3), dtype=torch.uint8)  # any canonical size is resized
    z = model(x)
    assert z.shape == (3, cfg.dim)
    assert torch.isfinite(z).all()
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    # float (B, 3, H, W) input in [0, 1] takes the same path
    assert model(x.permute(0, 3, 1, 2).float() / 255).shape == (3, cfg.dim)


def test_unknown_config_lists_valid_names():
    with pytest.raises(ValueError, match="valid: small"):
        encoder_config("huge")


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ImageEncoder(encoder_config("tiny")).eval()
    with torch.no_grad():  # make BN running stats non-trivial so they are checked too
        model.stem[0][1].running_mean.uniform_(-0.1, 0.1)
    x, _ = _pixels(8)
    model.save(tmp_path / "enc")
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == [
        "config.json",
        "weights.safetensors",
    ]
    loaded = ImageEncoder.from_checkpoint(tmp_path / "enc")
    assert loaded.config == model.config
    assert torch.equal(loaded(x), model(x))


def test_augment_is_seeded_and_in_range():
    x = torch.rand(4, 3, 32, 32)
    a = augment(x, torch.Generator().manual_seed(1), AugmentConfig(), size=24)
    b = augment(x, torch.Generator().manual_seed(1), AugmentConfig(), size=24)
    c = augment(x, torch.Generator().manual_seed(2), AugmentConfig(), size=24)
    assert a.shape == (4, 3, 24, 24) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_contrastive_loss_prefers_aligned_views():
    z = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    ids = torch.arange(8)
    aligned, *_ = contrastive_loss(torch.cat([z, z]), ids, 0.1)
    shuffled, *_ = contrastive_loss(torch.cat([z, z.roll(1, 0)]), ids, 0.1)
    assert aligned < shuffled
    pos = torch.zeros(8, 8, dtype=torch.bool)
    pos[0, 1] = pos[1, 0] = True
    _, label_term, pair_term = contrastive_loss(torch.cat([z, z]), ids, 0.1, label_pos=pos)
    assert label_term > 0 and pair_term == 0
    # Pulling the positive pair together lowers its term.
    z2 = z.clone()
    z2[1] = z[0]
    _, closer, _ = contrastive_loss(torch.cat([z2, z2]), ids, 0.1, label_pos=pos)
    assert closer < label_term


def test_training_lowers_loss_and_reports_progress():
    torch.manual_seed(0)
    x, labels = _pixels(64)
    model = ImageEncoder(encoder_config("tiny"))
    calls = []
    pairs = np.array([[0, 2], [1, 3], [4, 6]])
    metrics = train_encoder(
        model,
        x,
        labels,
        pairs,
        _tiny_train(max_steps=8, log_every=4, lr=3e-3),
        progress=calls.append,
    )
    assert [c["step"] for c in calls] == [4, 8] and calls[-1]["total"] == 8
    assert len(metrics["loss"]) == 8 and metrics["params"] == model.num_params()
    assert np.mean(metrics["loss"][-2:]) < np.mean(metrics["loss"][:2])
    assert not model.training


def test_training_is_deterministic_on_cpu():
    x, labels = _pixels(64)
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = ImageEncoder(encoder_config("tiny"))
        train_encoder(model, x, labels, config=_tiny_train(seed=3))
        weights.append(model.state_dict())
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k


def test_split_subspaces_each_term_reads_its_own():
    """z_label / z_pair: each extra term is computed on its own vectors; default = z."""
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(16, 16), dim=1)
    ids, pos = torch.arange(8), torch.eye(8, dtype=torch.bool).roll(1, 1)
    pos = pos | pos.T
    base = contrastive_loss(z, ids, 0.1, pos, pos)
    same = contrastive_loss(z, ids, 0.1, pos, pos, z_label=z, z_pair=z)
    assert all(torch.allclose(a, b) for a, b in zip(base, same, strict=True))
    other = torch.nn.functional.normalize(torch.randn(16, 16), dim=1)
    moved = contrastive_loss(z, ids, 0.1, pos, pos, z_pair=other)
    assert torch.allclose(moved[1], base[1]) and not torch.allclose(moved[2], base[2])
    assert torch.allclose(moved[0], base[0])  # InfoNCE always reads the whole embedding


def test_pair_dims_trains_and_is_checked(monkeypatch):
    import models.train_encoder as te

    x, labels = _pixels(64)
    torch.manual_seed(0)
    model = ImageEncoder(encoder_config("tiny"))
    pairs = np.array([[0, 2], [1, 3], [4, 6]])
    widths, original = [], te.contrastive_loss
    monkeypatch.setattr(te, "contrastive_loss", lambda *a, **kw: widths.append(
        (kw["z_label"].shape[1], kw["z_pair"].shape[1])) or original(*a, **kw))  # fmt: skip
    m = train_encoder(model, x, labels, pairs, _tiny_train(max_steps=8, lr=3e-3, pair_dims=8))
    assert np.mean(m["loss"][-2:]) < np.mean(m["loss"][:2])
    assert widths == [(model.config.dim - 8, 8)] * 8
    widths.clear()
    train_encoder(model, x, labels, pairs, _tiny_train(max_steps=2, pair_dims=-1))
    assert widths == [(model.config.dim * 3 // 4, model.config.dim // 4)] * 2  # -1: a quarter
    calls = []
    monkeypatch.setattr(te, "contrastive_loss", lambda *a, **kw: calls.append(sorted(kw)) or original(*a, **kw))
    train_encoder(model, x, labels, None, _tiny_train(max_steps=2, pair_dims=-1))
    assert calls == [[]] * 2  # no pairs: no engagement subspace, the label term keeps every dim
    train_encoder(model, x, labels, pairs, _tiny_train(max_steps=2, pair_dims=-1, pair_weight=0.0))
    assert calls == [[]] * 4  # nor with the pair term switched off
    for bad in (model.config.dim, -2):
        with pytest.raises(ValueError, match="pair_dims must be -1 or in"):
            train_encoder(model, x, labels, pairs, _tiny_train(pair_dims=bad))


def test_training_rejects_bad_pairs():
    x, _ = _pixels(16)
    with pytest.raises(AssertionError, match=r"outside \[0, 16\)"):
        train_encoder(ImageEncoder(encoder_config("tiny")), x, positive_pairs=np.array([[0, 16]]))


def test_embed_streaming_equals_one_shot():
    torch.manual_seed(0)
    model = ImageEncoder(encoder_config("tiny")).eval()
    x, _ = _pixels(20)
    whole = embed_pixels(model, x, batch_size=64)
    chunks = (x[i : i + 7] for i in range(0, 20, 7))  # uneven chunks, re-batched to <= 4 rows
    streamed = embed_pixels(model, chunks, batch_size=4)
    assert whole.dtype == np.float32 and whole.shape == (20, 32)
    np.testing.assert_allclose(streamed, whole, atol=1e-5)
    assert max(len(b) for b in iter_embeddings(model, iter([x]), batch_size=4)) == 4
    one = embed_pixels(model, x[3], batch_size=16)  # one image (S, S, 3): one embedding, not S/16
    assert one.shape == (1, 32)
    np.testing.assert_allclose(one[0], whole[3], atol=1e-5)


def test_knn_label_precision_hand_made():
    # Two tight clusters on the x and y axes; one mislabelled point in the x cluster.
    emb = np.array([[1, 0.01], [1, 0.02], [1, 0.03], [0.01, 1], [0.02, 1], [0.03, 1]], np.float32)
    labels = np.array([0, 0, 1, 1, 1, 1])
    # k=2: rows 0,1 see one correct neighbour of two (0.5), row 2 sees none (0), rows 3-5 all (1).
    assert knn_label_precision(emb, labels, k=2) == pytest.approx((0.5 + 0.5 + 0 + 1 + 1 + 1) / 6)
    assert knn_label_precision(emb, labels, k=2, query_idx=[3, 4]) == 1.0
    # Unknown labels are neither queries nor neighbours.
    assert knn_label_precision(emb, np.array([0, 0, -1, 1, 1, 1]), k=1) == 1.0


def test_coengagement_recall_and_pixel_baseline():
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    assert coengagement_recall_at_k(emb, np.array([[0, 1], [2, 3]]), k=1) == 1.0
    assert coengagement_recall_at_k(emb, np.array([[0, 2]]), k=1) == 0.0
    x, labels = _pixels(32)
    base = pixel_baseline(x, d=8, fit_idx=np.arange(16), size=8)
    assert base.shape == (32, 8) and np.allclose(np.linalg.norm(base, axis=1), 1, atol=1e-5)
    assert knn_label_precision(base, labels, k=5) > 0.9


class _Stop(Exception):
    """Stands for the process dying: raised from the progress callback."""


def test_a_stopped_encoder_run_resumes_and_ends_as_an_unstopped_one(tmp_path):
    """Stopped after step 4 of 8 (its progress saved every step) and run again: the same
    weights, bit for bit, and the same loss curve as a run never stopped; a run with other
    settings starts afresh."""
    from models.resume import ProgressFile

    x, labels = _pixels(64)
    pairs = np.array([[0, 2], [1, 3], [4, 6]])
    cfg = _tiny_train(max_steps=8, log_every=2, checkpoint_seconds=0.0)

    def fresh():
        torch.manual_seed(0)
        return ImageEncoder(encoder_config("tiny"))

    whole = fresh()
    expected = train_encoder(whole, x, labels, pairs, cfg)

    def stop(event):
        if event["step"] == 4:
            raise _Stop

    progress = ProgressFile(tmp_path / "encoder.safetensors")
    with pytest.raises(_Stop):
        train_encoder(fresh(), x, labels, pairs, cfg, progress=stop, progress_file=progress)
    events = []
    resumed = fresh()
    torch.manual_seed(99)  # whatever the new process's generators hold: the saved states win
    m = train_encoder(resumed, x, labels, pairs, cfg, progress=events.append, progress_file=progress)
    assert events[0]["event"] == "resumed" and m["resumed_at_step"] == 4
    assert m["loss"] == expected["loss"] and m["steps"] == expected["steps"]
    want = whole.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in resumed.state_dict().items())
    other = train_encoder(fresh(), x, labels, pairs, _tiny_train(max_steps=8, lr=1e-3), progress_file=progress)
    assert other["resumed_at_step"] is None


def test_a_run_resumes_only_on_the_kind_of_device_it_was_saved_on():
    """A GPU run's augmentation generator and mixed precision would switch halfway on a CPU
    (and the other way round): the resume identity holds the device type, not its index."""
    from models.resume import restore_rng, rng_tensors
    from models.train_encoder import resume_settings

    cfg = _tiny_train()
    assert resume_settings(cfg, torch.device("cuda:0")) == resume_settings(cfg, torch.device("cuda:1"))
    assert resume_settings(cfg, torch.device("cuda")) != resume_settings(cfg, torch.device("cpu"))
    # the RNG states of such a run, handed to a CPU run all the same, leave its generator alone
    g = torch.Generator().manual_seed(1)
    saved = {**rng_tensors(g, torch.device("cpu")), "rng.device_gen": torch.zeros(16, dtype=torch.uint8)}
    restore_rng(g, saved, torch.device("cpu"), g)
    assert torch.equal(g.get_state(), saved["rng.gen"])
