"""Training of a reranker (gutted VLM, full-VLM baseline or sequential peer).

`train_reranker(scorer, features, groups, val_groups, cfg)` is generic over any scorer with
`score(query_feats (B, ...), cand_feats (B, C, ...)) -> (B, C)`, `stage1_parameters()` and an
`lm` attribute. Each group row is [query_idx, positive_idx, neg_idx...] into `features`
(float (N, d) embeddings for the gutted model, uint8 (N, S, S, 3) pixels for the full VLM),
and `prior` (N,), when given, is each row's engagement bucket, read as the candidate's prior.
For the "for a user" task, `queries` (U, H) holds each user's history rows (oldest first,
left padded with -1) and a group's column 0 indexes it instead of `features`.
The loss is listwise softmax cross-entropy with the candidate order shuffled per group, so
the positive's column carries no signal. Stage 1 trains the projector only; stage 2 injects
LoRA (peft) into the language model and trains it with the projector. Each stage stops early
when validation NDCG@10 has not improved for `patience` evaluations; the best state wins.
With both tasks in the val groups (`val_is_user` says which group is which), validation
NDCG@10 is the mean of the two tasks' means (`task_balanced`), so the selected state serves
users as well as related images. With a `ProgressFile`, a killed run is resumed by the next
(models/resume.py).
Training runs on `cfg.device` ("auto": the GPU when torch sees one); the scorer goes back to
the device it came on afterwards, so callers never branch on hardware.
A trained reranker is saved and loaded by models/rerankers.py.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.device import resolve_device
from models.ranking_metrics import ndcg_at_k, positive_first_relevance
from models.rerankers import add_lora, has_lora, load_trained, trained_state
from models.resume import (
    ProgressFile,
    fingerprint,
    load_optimizer_tensors,
    optimizer_tensors,
    restore_rng,
    rng_tensors,
)
from models.scoring import device_of, feature_tensor, prior_tensor, query_inputs, score_candidates

log = logging.getLogger(__name__)


@dataclass
class RerankerTrainConfig:
    stage1_epochs: int = 4  # epochs of projector-only training
    stage2_epochs: int = 4  # epochs of LoRA + projector training (0 = no LoRA)
    batch_groups: int = 8  # groups (query + candidates) per optimizer step
    lr: float = 2e-3  # projector learning rate (AdamW)
    lora_lr: float = 1e-3  # LoRA learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    lora_r: int = 8  # LoRA rank
    lora_alpha: int = 16  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.0  # LoRA dropout (0 keeps CPU runs deterministic and cheap)
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # LM linear names
    patience: int = 2  # evaluations without a val NDCG@10 gain before a stage stops
    evals_per_epoch: int = 1  # validation evaluations per epoch
    progress_seconds: float = 20.0  # most seconds between progress events while training
    checkpoint_seconds: float = 300.0  # most seconds between saves of a run's progress (when it has a file)
    eval_batch: int = 16  # groups per scoring batch at evaluation
    grad_clip: float = 1.0  # max gradient norm
    seed: int = 0  # batch order, candidate shuffles and LoRA init
    device: str = "auto"  # where training runs: "auto" (cuda when available), "cpu", "cuda:N"


def _as_tensor(features, scorer=None) -> torch.Tensor:
    """Features as a tensor on the scorer's device; a scorer with `prepare_features` (frozen
    tower) converts them once."""
    t = feature_tensor(features)
    if scorer is None:
        return t
    t = t.to(device_of(scorer))
    prepare = getattr(scorer, "prepare_features", None)
    return t if prepare is None else prepare(t)


def _check_groups(groups, n_items: int, what: str, n_queries: int) -> np.ndarray:
    groups = np.asarray(groups)
    if groups.ndim != 2 or groups.shape[1] < 3 or not np.issubdtype(groups.dtype, np.integer):
        raise ValueError(
            f"{what} must be an int array (G, 2+n) of [query, positive, negatives...] with n >= 1, "
            f"got shape {groups.shape} dtype {groups.dtype}"
        )
    for part, n in ((groups[:, :1], n_queries), (groups[:, 1:], n_items)):
        if part.min() < 0 or part.max() >= n:
            raise ValueError(f"{what} index {part.max()} / {part.min()} out of range [0, {n})")
    return groups


def evaluate(scorer, features, groups, batch: int = 16, k: int = 10, prior=None, queries=None) -> dict:
    """Score groups (positive in column 1) and return mean NDCG@k plus the raw scores."""
    groups = np.asarray(groups)
    query_rows = groups[:, 0] if queries is None else np.asarray(queries)[groups[:, 0]]
    scores = score_candidates(scorer, _as_tensor(features, scorer), query_rows, groups[:, 1:], batch,
                              prior=prior)  # (G, C)
    ndcg = ndcg_at_k(scores, positive_first_relevance(*scores.shape), k)
    return {"ndcg": float(ndcg.mean()), "per_group": ndcg, "scores": scores}


def task_balanced(per_group: np.ndarray, is_user: np.ndarray | None) -> float:
    """Validation NDCG@10 with each task weighing the same: the mean over tasks of the task's
    mean, so a model is selected for both tasks whatever their share of the val groups."""
    if is_user is None or is_user.all() or not is_user.any():
        return float(per_group.mean())
    return float((per_group[is_user].mean() + per_group[~is_user].mean()) / 2)


def _train_step(scorer, feats, g: torch.Tensor, gen, opt, params, clip: float, prior=None, queries=None) -> float:
    """One listwise step on groups g (B, 1 + C); candidate order shuffled per group."""
    cands = g[:, 1:]  # (B, C), positive in column 0
    perm = torch.argsort(torch.rand(cands.shape, generator=gen), dim=1)
    target = (perm == 0).float().argmax(1)  # (B,) where the positive landed
    shuffled = torch.gather(cands, 1, perm)
    p = None if prior is None else prior_tensor(prior, shuffled.numpy())
    q, history = query_inputs(feats, g[:, 0].numpy() if queries is None else queries[g[:, 0].numpy()])
    logits = scorer.score(q, feats[shuffled], prior=p, history=history)  # (B, C)
    loss = F.cross_entropy(logits, target.to(logits.device))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    return loss.item()


def _stage_params(scorer, stage: int, cfg: RerankerTrainConfig) -> list[dict]:
    """Optimizer groups of a stage: 1 = projector, 2 = projector + LoRA; all else frozen."""
    for p in scorer.parameters():
        p.requires_grad_(False)
    groups = [{"params": scorer.stage1_parameters(), "lr": cfg.lr}]
    if stage == 2:
        lora = [p for n, p in scorer.lm.named_parameters() if "lora_" in n]
        groups.append({"params": lora, "lr": cfg.lora_lr})
    for group in groups:
        for p in group["params"]:
            p.requires_grad_(True)
    return groups


def _epoch_batches(lengths: np.ndarray, size: int, gen: torch.Generator) -> list[np.ndarray]:
    """One epoch's batches of group indices, in a random order. Groups whose queries are one
    image and groups whose queries are histories are batched apart (a history would left-pad
    every one-image prompt of its batch to its own length); with one kind, plain shuffled
    batches."""
    kinds = [np.flatnonzero(lengths == 1), np.flatnonzero(lengths > 1)]
    batches = []
    for members in (k for k in kinds if len(k)):
        order = members[torch.randperm(len(members), generator=gen).numpy()]
        batches += [order[i: i + size] for i in range(0, len(order), size)]
    if all(len(k) for k in kinds):
        batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).numpy()]
    return batches


def _run_stages(scorer, feats, groups, val_groups, cfg: RerankerTrainConfig, gen, emit, prior=None, queries=None,
                val_is_user=None, progress_file: ProgressFile | None = None, run_id: str = ""):
    """Stage 1 then stage 2 with early stopping; the scorer ends at the best state seen.
    With `progress_file`, progress is saved at every evaluation, at every stage's end and at
    least every `cfg.checkpoint_seconds`; a file saved by a run with the same `run_id`
    (fingerprint) is resumed from, with the same result as a run never stopped.
    Returns (untrained val NDCG@10, best {ndcg, stage, step, state}, loss curve, val curve, steps)."""
    t0 = last_emit = last_save = time.perf_counter()

    def validate() -> float:
        per_group = evaluate(scorer, feats, val_groups, cfg.eval_batch, prior=prior, queries=queries)["per_group"]
        return task_balanced(per_group, val_is_user)

    lengths = np.ones(len(groups), dtype=np.int64) if queries is None else (queries[groups[:, 0]] >= 0).sum(1)
    n_batches = len(_epoch_batches(lengths, cfg.batch_groups, torch.Generator().manual_seed(0)))
    total = n_batches * (max(cfg.stage1_epochs, 0) + max(cfg.stage2_epochs, 0))  # early stopping may end sooner
    eval_at = set(np.linspace(0, n_batches, cfg.evals_per_epoch + 1, dtype=int)[1:].tolist())
    # where the loop is: everything a resumed run needs besides the tensors
    saved = progress_file.load(run_id) if progress_file is not None else None
    order, opt_tensors = None, {}
    if saved is None:
        first = validate()
        at = {"stage": 1, "epoch": 0, "batch": 0, "step": 0, "stale": 0, "first": first,
              "best": {"ndcg": first, "stage": 0, "step": 0}, "loss": [], "val": [
                  {"stage": 0, "step": 0, "val_ndcg10": first}]}
        best_state = trained_state(scorer)
        log.info("untrained val NDCG@10 %.4f", first)
        emit({"event": "eval", "stage": 0, "step": 0, "total": total, "val_ndcg10": first,
              "elapsed": time.perf_counter() - t0})
    else:
        tensors, at = saved
        load_trained(scorer, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        best_state = {k[5:]: v.to(device_of(scorer)) for k, v in tensors.items() if k.startswith("best.")}
        restore_rng(gen, tensors, device_of(scorer))
        sizes = at.pop("order_sizes", None)
        if sizes is not None:  # stopped within an epoch: its batches, in their order
            order = np.split(tensors["order"].numpy(), np.cumsum(sizes)[:-1])
        opt_tensors = {k: v for k, v in tensors.items() if k.startswith("opt.")}
        t0 -= at.pop("elapsed")  # progress events count the time trained before the stop
        log.info("resuming from %s at stage %d, step %d", progress_file.path, at["stage"], at["step"])
        emit({"event": "resumed", "stage": at["stage"] if at["stage"] <= 2 else None, "step": at["step"], "total": total,
              "elapsed": time.perf_counter() - t0})

    def save(opt=None) -> None:
        nonlocal last_save
        if progress_file is None:
            return
        tensors = {**{f"model.{k}": v for k, v in trained_state(scorer).items()},
                   **{f"best.{k}": v for k, v in best_state.items()}, **rng_tensors(gen, device_of(scorer)),
                   **(optimizer_tensors(opt) if opt is not None else {})}
        meta = {**at, "elapsed": time.perf_counter() - t0}
        if order is not None:
            tensors["order"] = torch.as_tensor(np.concatenate(order))
            meta["order_sizes"] = [len(b) for b in order]
        progress_file.save(run_id, tensors, meta)
        last_save = time.perf_counter()

    for stage, epochs in ((1, cfg.stage1_epochs), (2, cfg.stage2_epochs)):
        if epochs <= 0 or stage < at["stage"]:
            continue
        if stage > at["stage"]:
            at.update(stage=stage, epoch=0, batch=0, stale=0)
        param_groups = _stage_params(scorer, stage, cfg)
        params = [p for x in param_groups for p in x["params"]]
        opt = torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay)
        if opt_tensors:
            load_optimizer_tensors(opt, opt_tensors)
            opt_tensors = {}
        scorer.train()
        while at["epoch"] < epochs and at["stale"] < cfg.patience:
            epoch = at["epoch"]
            if order is None:
                order = _epoch_batches(lengths, cfg.batch_groups, gen)
            for bi in range(at["batch"], len(order)):
                g = torch.as_tensor(groups[order[bi]])
                loss = _train_step(scorer, feats, g, gen, opt, params, cfg.grad_clip, prior, queries)
                at["step"] += 1
                at["batch"] = bi + 1
                step = at["step"]
                at["loss"].append({"stage": stage, "step": step, "loss": loss})
                where = {"stage": stage, "epoch": epoch, "epochs": epochs, "step": step, "total": total}
                if bi + 1 not in eval_at:
                    if time.perf_counter() - last_emit >= cfg.progress_seconds:
                        last_emit = time.perf_counter()
                        emit({"event": "step", **where, "loss": loss, "elapsed": last_emit - t0})
                    if time.perf_counter() - last_save >= cfg.checkpoint_seconds:
                        save(opt)
                    continue
                val = validate()
                mean_loss = float(np.mean([c["loss"] for c in at["loss"][-n_batches:]]))
                at["val"].append({"stage": stage, "step": step, "val_ndcg10": val})
                if val > at["best"]["ndcg"] + 1e-6:
                    at["best"] = {"ndcg": val, "stage": stage, "step": step}
                    best_state = trained_state(scorer)
                    at["stale"] = 0
                else:
                    at["stale"] += 1
                save(opt)
                last_emit = time.perf_counter()
                emit({"event": "eval", **where, "train_loss": mean_loss, "val_ndcg10": val,
                      "elapsed": last_emit - t0})  # fmt: skip
                log.info("stage %d epoch %d step %d loss %.4f val NDCG@10 %.4f",
                         stage, epoch, step, mean_loss, val)  # fmt: skip
                if at["stale"] >= cfg.patience:
                    break
            if at["stale"] >= cfg.patience:
                log.info("stage %d stopped early at step %d", stage, at["step"])
                break
            at.update(epoch=epoch + 1, batch=0)
            order = None
        load_trained(scorer, best_state)  # the next stage starts from the best so far
        at.update(stage=stage + 1, epoch=0, batch=0, stale=0)
        order = None
        save()
    best = {**at["best"], "state": best_state}
    return at["first"], best, at["loss"], at["val"], at["step"]


def train_reranker(
    scorer,
    features,
    groups,
    val_groups,
    cfg: RerankerTrainConfig | None = None,
    progress: Callable[[dict], None] | None = None,
    prior=None,
    queries=None,
    val_is_user=None,
    progress_file: ProgressFile | None = None,
) -> dict:
    """Train `scorer` in place (stage 1 projector, stage 2 LoRA + projector); return metrics:
    best and untrained val NDCG@10, loss and val curves, trained parameter count, seconds.
    `val_is_user` (bool per val group) marks the "for a user" groups, so the validation
    NDCG@10 that selects the checkpoint weighs both tasks alike; None: one task.
    With `progress_file`, a killed run is resumed by the next one with the same inputs and
    settings (metrics["resumed_at_step"]); the file ends holding the finished run, for the
    caller to clear once the trained model is saved (a kill before that loses nothing)."""
    cfg = cfg or RerankerTrainConfig()
    for knob in ("batch_groups", "patience", "evals_per_epoch"):  # at 0: no step, or no evaluation to keep
        if getattr(cfg, knob) < 1:
            raise ValueError(f"{knob} must be >= 1, got {getattr(cfg, knob)}")
    feats = _as_tensor(features)
    scorer.check_features(feats, "features")
    n_queries = len(feats) if queries is None else len(queries)
    groups = _check_groups(groups, len(feats), "groups", n_queries)
    val_groups = _check_groups(val_groups, len(feats), "val_groups", n_queries)
    if val_is_user is not None:
        val_is_user = np.asarray(val_is_user, dtype=bool)
        if val_is_user.shape != (len(val_groups),):
            raise ValueError(f"val_is_user must hold one flag per val group ({len(val_groups)}), "
                             f"got shape {val_is_user.shape}")
    if queries is not None:
        queries = np.asarray(queries, dtype=np.int64)
        if queries.ndim != 2 or queries.max(initial=-1) >= len(feats) or (queries.max(axis=1) < 0).any():
            raise ValueError(f"queries must be (U, H) histories of rows below {len(feats)}, -1 for none, "
                             f"each with at least one image; got shape {queries.shape}")
    emit = progress or (lambda _m: None)
    t0 = time.perf_counter()
    home = device_of(scorer)
    device = resolve_device(cfg.device)
    gen = torch.Generator().manual_seed(cfg.seed)  # on the CPU: same batches on any device
    if cfg.stage2_epochs > 0 and not has_lora(scorer):
        if getattr(scorer, "lm", None) is None:
            raise ValueError(f"{scorer.kind} has no language model for LoRA: train it with stage2_epochs=0")
        add_lora(scorer, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets, cfg.seed)
    run_id = ""
    if progress_file is not None:  # what a saved run must share to be resumed: inputs, settings, start
        settings = {k: v for k, v in dataclasses.asdict(cfg).items()
                    if k not in ("device", "progress_seconds", "checkpoint_seconds")}
        # the start is every tensor, the frozen base's too: a base checkpoint changed in place
        # since the run was saved starts a fresh run
        run_id = fingerprint(settings, scorer.kind, dataclasses.asdict(scorer.cfg), feats, groups, val_groups,
                             *(np.asarray(a) for a in (queries, val_is_user, prior) if a is not None),
                             [a is None for a in (queries, val_is_user, prior)], *scorer.state_dict().values())
    resumed = []
    try:  # whatever happens, the scorer goes back frozen to the device it came on
        scorer.to(device)
        feats = _as_tensor(feats, scorer)  # moved (and tower-prepared) once, on the device
        log.info("training %s on %s", scorer.kind, device)

        def emit_and_note(event: dict) -> None:
            if event["event"] == "resumed":
                resumed.append(event["step"])
            emit(event)

        first, best, curve_loss, curve_val, step = _run_stages(
            scorer, feats, groups, val_groups, cfg, gen, emit_and_note, prior, queries, val_is_user,
            progress_file, run_id)
    finally:
        for p in scorer.parameters():
            p.requires_grad_(False)
        scorer.eval().to(home)
    seconds = time.perf_counter() - t0
    emit({"event": "done", "best_val_ndcg10": best["ndcg"], "seconds": seconds})
    return {
        "best_val_ndcg10": best["ndcg"],
        "best_stage": best["stage"],
        "best_step": best["step"],
        "untrained_val_ndcg10": first,
        "val_curve": curve_val,
        "loss_curve": curve_loss,
        "steps": step,
        "trained_params": sum(v.numel() for v in trained_state(scorer).values()),
        "seconds": seconds,
        "train_config": dataclasses.asdict(cfg),
        "device": str(device),
        "resumed_at_step": resumed[0] if resumed else None,
    }
