"""Every reranker kind, its trained tensors, and its checkpoint.

`RERANKERS` maps a kind (`scorer.kind`) to its config dataclass and builder. A checkpoint
(`save_reranker`) holds only the trained tensors (projector, LoRA), the configs and the base
model's identity; `load_reranker(dir)` rebuilds the frozen base, checks that it is the one
trained on, and loads the tensors on top. `trained_state` and `load_trained` are what
training (models/train_reranker.py) saves and restores between stages and across a resume.
"""

from __future__ import annotations

import dataclasses

import torch

from models.checkpoint import config_kwargs, load_checkpoint, save_checkpoint
from models.full_vlm import FullVLMConfig, build_full_vlm
from models.gutted_vlm import GuttedConfig, base_identity, build_gutted
from models.sequential import SequentialConfig, build_sequential

# Every reranker kind: its config dataclass and builder (`scorer.kind` names it in checkpoints).
RERANKERS = {"gutted": (GuttedConfig, build_gutted), "full_vlm": (FullVLMConfig, build_full_vlm),
             "sequential": (SequentialConfig, build_sequential)}


def trained_state(scorer) -> dict[str, torch.Tensor]:
    """The trained tensors of a scorer (projector and any LoRA), detached copies by name, on
    the scorer's device."""
    names = trainable_names(scorer)
    return {k: v.detach().clone() for k, v in scorer.state_dict().items() if k in names}


def trainable_names(scorer) -> set[str]:
    """Names of the parameters training changes: the projector (stage 1) and any LoRA."""
    stage1 = {id(p) for p in scorer.stage1_parameters()}
    return {n for n, p in scorer.named_parameters() if id(p) in stage1 or "lora_" in n}


def has_lora(scorer) -> bool:
    lm = getattr(scorer, "lm", None)  # the sequential peer has no language model
    return lm is not None and any("lora_" in n for n, _ in lm.named_parameters())


def add_lora(scorer, r: int, alpha: float, dropout: float, targets, seed: int = 0) -> None:
    """Inject LoRA adapters (peft) into the scorer's language model, seeded."""
    from peft import LoraConfig, inject_adapter_in_model

    lcfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        inject_adapter_in_model(lcfg, scorer.lm)


def load_trained(scorer, state: dict[str, torch.Tensor]) -> None:
    """Load tensors by name; every name must exist in the scorer."""
    result = scorer.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"tensors not in the scorer: {result.unexpected_keys[:5]}")


def save_reranker(scorer, directory, metrics: dict | None = None):
    """Write only the trained tensors, the model config, the LoRA config and the base identity."""
    lora = None
    if has_lora(scorer):
        pc = scorer.lm.peft_config["default"]  # set by peft's inject_adapter_in_model
        lora = {"r": pc.r, "alpha": pc.lora_alpha, "dropout": pc.lora_dropout,
                "targets": sorted(pc.target_modules)}  # fmt: skip
    config = {"kind": scorer.kind, "model": dataclasses.asdict(scorer.cfg), "lora": lora}
    extra = {"base": scorer.base_identity}
    if metrics is not None:
        extra["best_val_ndcg10"] = metrics.get("best_val_ndcg10")
        extra["history"] = metrics.get("history")  # the most history images a user was read with
    return save_checkpoint(directory, trained_state(scorer), config, extra)


def load_reranker(directory):
    """Rebuild a reranker saved by `save_reranker`: frozen base + trained tensors."""
    tensors, config, extra = load_checkpoint(directory)
    if config.get("kind") not in RERANKERS:
        raise ValueError(
            f"checkpoint {directory} has kind {config.get('kind')!r}; valid: {', '.join(RERANKERS)}"
        )
    cfg_cls, build = RERANKERS[config["kind"]]
    # fields a checkpoint saved before them lacks: no prior; the question after the candidate;
    # no similarity token
    legacy = {k: v for k, v in {"prior_buckets": 0, "cue": "", "similarity_token": False}.items()
              if k in {f.name for f in dataclasses.fields(cfg_cls)}}
    cfg = cfg_cls(**{**legacy, **config_kwargs(cfg_cls, config["model"], directory)})
    want = extra.get("base")
    if hasattr(cfg, "base"):  # the frozen base must be the one trained on, before it is built
        have = base_identity(cfg.base, cfg.seed)
        if want is not None and want != have:
            raise ValueError(
                f"base model changed since {directory} was saved: saved {want}, found {have}"
            )
    scorer = build(cfg)
    if config.get("lora"):
        lc = config["lora"]
        add_lora(scorer, lc["r"], lc["alpha"], lc["dropout"], lc["targets"])  # shapes; values come from the checkpoint
    expected = trainable_names(scorer)
    if set(tensors) != expected:
        raise ValueError(
            f"checkpoint {directory} tensors do not match the model: missing "
            f"{sorted(expected - set(tensors))[:5]}, unexpected {sorted(set(tensors) - expected)[:5]}"
        )
    load_trained(scorer, tensors)
    for p in scorer.parameters():
        p.requires_grad_(False)
    return scorer.eval()
