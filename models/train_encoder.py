"""Contrastive training of the in-house image encoder (models/encoder.py).

Each step draws a batch of images, makes two augmented views of each (models/augment.py) and
minimises InfoNCE between the views (every other image in the batch is a negative). When
labels or co-engagement pairs exist, multi-positive supervised-contrastive terms (SupCon) are
added: images sharing a label (>= 0) are positives of each other (weight `sup_weight`), and so
are images linked by a co-engagement pair (weight `pair_weight`, kept apart because engagement
is denser and noisier than labels). Extra positives are never used as negatives. A share of
every batch is drawn from the pairs so that linked images actually meet. Training is a plain
function: seeded and deterministic on CPU, bf16/fp16 autocast on CUDA, logs through `logging`,
reports progress through an optional callback, returns metrics, and leaves the model in eval
mode."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from models.augment import AugmentConfig, augment
from models.device import resolve_device
from models.encoder import ImageEncoder
from models.resume import (
    ProgressFile,
    fingerprint,
    load_optimizer_tensors,
    optimizer_tensors,
    restore_rng,
    rng_tensors,
)

log = logging.getLogger(__name__)


@dataclass
class EncoderTrainConfig:
    epochs: int = 8  # passes over the images
    min_steps: int = 200  # small sets get at least this many steps (more epochs)
    max_steps: int | None = None  # cap on optimizer steps, applied last (None: no cap)
    batch_size: int = (
        128  # images per step, each seen as two views; more steps beat bigger batches here
    )
    lr: float = 5e-3  # AdamW peak learning rate, after linear warmup, then cosine to 0
    warmup_steps: int = 20  # capped at a fifth of the steps
    weight_decay: float = 0.05
    temperature: float = 0.1  # softmax temperature of both contrastive terms
    sup_weight: float = 4.0  # weight of the multi-positive term over same-label images
    pair_weight: float = 1.0  # weight of the multi-positive term over co-engaged images
    pair_fraction: float = 0.5  # share of each batch drawn from co-engagement pairs
    # Dimensions at the end of the embedding that the co-engagement term shapes on its own
    # (0 = all of them, with the label term; -1 = a quarter of the embedding, 32 of 128;
    # without pairs or with pair_weight 0, none). Separate subspaces keep label similarity
    # and engagement similarity from overwriting each other.
    pair_dims: int = -1
    seed: int = 0  # drives batch order and augmentations (initialise the model yourself)
    log_every: int = 10  # steps between log lines and progress callbacks
    checkpoint_seconds: float = 300.0  # most seconds between saves of a run's progress (when it has a file)
    device: str = "auto"  # "auto": cuda when available, else cpu
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def resize_pixels(model: ImageEncoder, pixels: np.ndarray, chunk: int = 1024) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> uint8 (N, 3, s, s) at the encoder's input size, in bounded chunks."""
    out = []
    with torch.no_grad():
        for i in range(0, len(pixels), chunk):
            x = model.preprocess(np.ascontiguousarray(pixels[i : i + chunk])).cpu()
            out.append(x.mul_(255).round_().to(torch.uint8))
    return torch.cat(out)


def contrastive_loss(
    z: torch.Tensor,
    ids: torch.Tensor,
    temperature: float,
    label_pos: torch.Tensor | None = None,
    pair_pos: torch.Tensor | None = None,
    z_label: torch.Tensor | None = None,
    z_pair: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """InfoNCE over two views, plus one multi-positive (SupCon) term per kind of extra positive.

    z: (2B, d) unit vectors, the views of image ids[i] at rows i and i + B. ids: (B,) dataset
    indices (an image drawn twice is not its own negative). label_pos / pair_pos: (B, B) bool,
    same known label / co-engaged, or None. Extra positives are never negatives, not even for
    InfoNCE. z_label / z_pair: the unit vectors each extra term is computed on (default z),
    e.g. two subspaces of the embedding. Returns (infonce, label_term, pair_term); a term is 0
    where it has no positive.
    """
    n = z.shape[0]
    B = n // 2
    assert n == 2 * B == 2 * ids.shape[0], (
        f"z has {n} rows for {ids.shape[0]} ids; need 2 views each"
    )
    logits = (z @ z.T).float() / temperature  # (2B, 2B)
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    ids2 = torch.cat([ids, ids])
    same = ids2[:, None] == ids2[None, :]  # same image, either view
    partner = torch.roll(eye, B, dims=1)  # row i's other view
    extras = [None if p is None else p.repeat(2, 2) & ~same for p in (label_pos, pair_pos)]
    drop = same & ~partner
    for extra in extras:
        if extra is not None:
            drop |= extra
    target = torch.arange(n, device=z.device).roll(B)
    infonce = F.cross_entropy(logits.masked_fill(drop, float("-inf")), target)
    terms = []
    for extra, zt in zip(extras, (z_label, z_pair), strict=True):
        has = None if extra is None else extra.any(1)
        if has is None or not has.any():
            terms.append(infonce.new_zeros(()))
            continue
        term_logits = logits if zt is None else (zt @ zt.T).float() / temperature
        log_prob = F.log_softmax(term_logits.masked_fill(eye, float("-inf")), dim=1)  # (2B, 2B)
        positives = extra | (same & ~eye)  # the other view counts too, as in SupCon
        mean_pos = log_prob.masked_fill(~positives, 0.0).sum(1) / positives.sum(1)
        terms.append(-mean_pos[has].mean())
    return infonce, terms[0], terms[1]


class _Batches:
    """Seeded batch indices: an epoch-wise permutation with a share of co-engagement pairs mixed in."""

    def __init__(self, n: int, batch_size: int, pairs: np.ndarray | None, pair_fraction: float, g):
        self.n, self.bs, self.g = n, min(batch_size, n), g
        self.pairs = None if pairs is None or len(pairs) == 0 else torch.as_tensor(pairs).long()
        self.n_pair = 0 if self.pairs is None else int(self.bs * pair_fraction) // 2
        self.perm, self.pos = torch.randperm(n, generator=g), 0

    def __next__(self) -> torch.Tensor:
        k = self.bs - 2 * self.n_pair
        if self.pos + k > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.g), 0
        idx = self.perm[self.pos : self.pos + k]
        self.pos += k
        if self.n_pair:
            pick = torch.randint(len(self.pairs), (self.n_pair,), generator=self.g)
            idx = torch.cat([idx, self.pairs[pick].reshape(-1)])  # (bs,)
        return idx


def _label_mask(idx: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    """(B, B) bool: the same known (>= 0) label."""
    if labels is None:
        return None
    lab = labels[idx]
    return (lab[:, None] == lab[None, :]) & (lab[:, None] >= 0)


def _pair_mask(idx: torch.Tensor, pair_codes: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """(B, B) bool: linked by a co-engagement pair, either direction; pair_codes = sorted a * n + b."""
    if pair_codes is None:
        return None
    codes = idx[:, None] * n + idx[None, :]  # (B, B)
    at = torch.searchsorted(pair_codes, codes).clamp_(max=len(pair_codes) - 1)
    linked = pair_codes[at] == codes  # O(B^2 log P) membership
    return linked | linked.T


def resume_settings(cfg: EncoderTrainConfig, device: torch.device) -> dict:
    """The settings a saved run must share to be resumed: every training knob, and the kind of
    device (not which one). A GPU run draws its augmentations from a CUDA generator and
    trains in mixed precision; resumed on a CPU, or a CPU run on a GPU, it would switch both
    halfway, so such a run starts afresh instead."""
    knobs = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("device", "log_every", "checkpoint_seconds")}
    return {**knobs, "device_type": device.type}


def train_encoder(
    model: ImageEncoder,
    pixels: np.ndarray,
    labels: np.ndarray | None = None,
    positive_pairs: np.ndarray | None = None,
    config: EncoderTrainConfig | None = None,
    progress: Callable[[dict], None] | None = None,
    progress_file: ProgressFile | None = None,
) -> dict:
    """Train `model` in place on uint8 pixels (N, S, S, 3); returns metrics.

    labels: (N,) int, -1 for unknown. positive_pairs: (P, 2) indices of co-engaged images.
    Metrics: loss, infonce, label_term, pair_term (per step), seconds, steps, epochs, params,
    images_per_second (views per second / 2), resumed_at_step.
    With `progress_file`, progress (the model, optimizer, loss scaler, generators, batch
    order, curves) is saved at least every `checkpoint_seconds` and when training ends, and
    a run with the same inputs, settings and initial model resumes it, ending with the
    weights an unstopped run would have; the caller clears it once the model is saved.
    """
    cfg = config or EncoderTrainConfig()
    assert pixels.ndim == 4 and pixels.shape[-1] == 3 and pixels.dtype == np.uint8, (
        f"pixels must be uint8 (N, S, S, 3), got {pixels.dtype} {pixels.shape}"
    )
    n = len(pixels)
    assert n >= 2, f"need at least 2 images to train, got {n}"
    assert cfg.temperature > 0, f"temperature must be > 0, got {cfg.temperature}"
    if not -1 <= cfg.pair_dims < model.config.dim:
        raise ValueError(f"pair_dims must be -1 or in [0, dim={model.config.dim}), got {cfg.pair_dims}")
    lab = None
    if labels is not None:
        labels = np.asarray(labels)
        assert labels.shape == (n,), f"labels shape {labels.shape} != ({n},)"
        lab = torch.as_tensor(labels).long() if (labels >= 0).any() else None
    codes = None
    if positive_pairs is not None and len(positive_pairs):
        positive_pairs = np.asarray(positive_pairs, dtype=np.int64).reshape(-1, 2)
        lo, hi = positive_pairs.min(), positive_pairs.max()
        assert lo >= 0 and hi < n, f"positive_pairs index range [{lo}, {hi}] outside [0, {n})"
        codes = torch.unique(torch.as_tensor(positive_pairs[:, 0] * n + positive_pairs[:, 1]))
    else:
        positive_pairs = None

    # without pairs (or their term) nothing would shape an engagement subspace: the label term keeps every dim
    pair_dims = 0 if positive_pairs is None or cfg.pair_weight == 0 else (model.config.dim // 4 if cfg.pair_dims == -1 else cfg.pair_dims)
    device = resolve_device(cfg.device)
    model.to(device)
    g = torch.Generator().manual_seed(cfg.seed)
    gen_dev = torch.Generator(device=device).manual_seed(cfg.seed) if device.type == "cuda" else g
    t0 = time.perf_counter()
    src = resize_pixels(model, pixels)  # (N, 3, s, s) uint8 on CPU
    batches = _Batches(n, cfg.batch_size, positive_pairs, cfg.pair_fraction, g)
    steps_per_epoch = math.ceil(n / batches.bs)
    total = max(cfg.epochs * steps_per_epoch, cfg.min_steps)
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    assert total > 0, f"no steps to run: epochs={cfg.epochs}, max_steps={cfg.max_steps}"

    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        fused=device.type == "cuda",
    )

    warmup = min(cfg.warmup_steps, total // 5)

    def lr_at(step: int) -> float:
        if step < warmup:
            return cfg.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))

    amp_dtype = None
    if device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    size = model.config.input_size
    losses, nces, sups, pairs_ = [], [], [], []
    start, resumed_at, trained_before, last_save, run_id = 0, None, 0.0, time.perf_counter(), ""
    if progress_file is not None:  # what a saved run must share to be resumed: inputs, settings, start
        run_id = fingerprint(resume_settings(cfg, device), dataclasses.asdict(model.config), pixels,
                             *(np.asarray(a) for a in (labels, positive_pairs) if a is not None),
                             [a is None for a in (labels, positive_pairs)], *model.state_dict().values())
        saved = progress_file.load(run_id)
        if saved is not None:
            tensors, meta = saved
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            load_optimizer_tensors(opt, tensors)
            if meta["scaler"]:
                scaler.load_state_dict(meta["scaler"])
            restore_rng(g, tensors, device, gen_dev)
            batches.perm, batches.pos = tensors["batches.perm"], meta["batches_pos"]
            losses, nces, sups, pairs_ = meta["loss"], meta["infonce"], meta["label_term"], meta["pair_term"]
            start = resumed_at = meta["step"]
            trained_before = meta["elapsed"]
            t0 -= trained_before  # seconds and progress count the time trained before the stop
            log.info("resuming encoder training from %s at step %d/%d", progress_file.path, start, total)
            if progress is not None:
                progress({"event": "resumed", "step": start, "total": total, "elapsed": meta["elapsed"]})

    def save(step: int) -> None:
        nonlocal last_save
        tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()}, **optimizer_tensors(opt),
                   **rng_tensors(g, device, gen_dev), "batches.perm": batches.perm}
        progress_file.save(run_id, tensors, {
            "step": step, "batches_pos": batches.pos, "scaler": scaler.state_dict(), "loss": losses,
            "infonce": nces, "label_term": sups, "pair_term": pairs_, "elapsed": time.perf_counter() - t0})
        last_save = time.perf_counter()

    model.train()
    log.info(
        "training encoder: %d images, %d steps, %d params on %s",
        n,
        total,
        model.num_params(),
        device,
    )
    for step in range(start, total):
        idx = next(batches)
        x = src[idx].to(device, non_blocking=True).float().div_(255.0)  # (B, 3, s, s)
        with torch.no_grad():
            views = torch.cat(
                [augment(x, gen_dev, cfg.augment, size), augment(x, gen_dev, cfg.augment, size)]
            )
        lpos, ppos = _label_mask(idx, lab), _pair_mask(idx, codes, n)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            raw = model.head(model.features(views)).float()  # (2B, d)
        z = F.normalize(raw, dim=-1)
        split = {}
        if pair_dims:
            split = {"z_label": F.normalize(raw[:, :-pair_dims], dim=-1),
                     "z_pair": F.normalize(raw[:, -pair_dims:], dim=-1)}  # fmt: skip
        nce, sup, pair = contrastive_loss(
            z,
            idx.to(device),
            cfg.temperature,
            None if lpos is None or cfg.sup_weight == 0 else lpos.to(device),
            None if ppos is None or cfg.pair_weight == 0 else ppos.to(device),
            **split,
        )
        loss = nce + cfg.sup_weight * sup + cfg.pair_weight * pair
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        assert torch.isfinite(loss), f"non-finite loss {loss.item()} at step {step}"
        losses.append(loss.item())
        nces.append(nce.item())
        sups.append(sup.item())
        pairs_.append(pair.item())
        if progress_file is not None and time.perf_counter() - last_save >= cfg.checkpoint_seconds:
            save(step + 1)
        if (step + 1) % cfg.log_every == 0 or step + 1 == total:
            log.info(
                "step %d/%d loss %.4f (infonce %.4f label %.4f pair %.4f)",
                step + 1,
                total,
                losses[-1],
                nces[-1],
                sups[-1],
                pairs_[-1],
            )
            if progress is not None:
                progress({"step": step + 1, "total": total, "loss": losses[-1], "elapsed": time.perf_counter() - t0})
    if progress_file is not None and resumed_at != total:
        save(total)  # finished: a kill before the caller saves the model retrains nothing
    model.eval()
    seconds = time.perf_counter() - t0
    return {
        "loss": losses,
        "infonce": nces,
        "label_term": sups,
        "pair_term": pairs_,
        "seconds": seconds,
        "steps": total,
        "epochs": total / steps_per_epoch,
        "params": model.num_params(),
        "images_per_second": (total - start) * batches.bs / max(seconds - trained_before, 1e-9),  # this run's
        "device": str(device),
        "resumed_at_step": resumed_at,
    }
