"""The reranking prompt and scoring head shared by the gutted VLM and the full-VLM baseline.

Both models turn an image into a run of LLM-space tokens (k projected soft tokens for the
gutted model, the vision tower's merged patch tokens for the full VLM) and feed the same
Qwen3-VL language model the same prompt:

    [vision_start] query tokens [vision_end] [vision_start] candidate tokens [vision_end] question

The score is `h_last · (w_yes − w_no)`, the yes−no logit difference computed from the last
position only, so full-vocabulary logits are never materialised. Sequences are left padded
with an attention mask and explicit M-RoPE position ids (text tokens: t = h = w; image grids:
the Qwen3-VL 3D layout). Two scoring modes: `use_cache=False` runs every (query, candidate)
prompt whole; `use_cache=True` runs the query prefix once per query, repeats its KV cache
across the candidates and runs only the candidate suffix.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

DEFAULT_QUESTION = "Is the second image relevant to the first? Answer:"


@dataclass
class Block:
    """A batch of left-padded token embeddings with positions and optional deepstack features."""

    embeds: torch.Tensor  # (N, L, H)
    mask: torch.Tensor  # (N, L) long, 1 = real token, 0 = left padding
    pos: torch.Tensor  # (3, N, L) M-RoPE (t, h, w) positions; padding gets 0
    next_pos: torch.Tensor  # (N,) position the next appended token gets
    visual: torch.Tensor | None = None  # (N, L) bool: positions that get deepstack features
    deepstack: list[torch.Tensor] | None = None  # per LM layer: (n_visual, H), row-major


@dataclass
class ImageTokens:
    """What a model makes of N images: LLM-space tokens plus how they are laid out."""

    embeds: torch.Tensor  # (N, T, H)
    grid: tuple[int, int] | None = None  # (gh, gw) merged grid, None = a 1D run of soft tokens
    deepstack: list[torch.Tensor] | None = None  # per LM layer: (N, T, H)


def text_positions(length: int, start: int = 0) -> torch.Tensor:
    """M-RoPE positions of a text run: (3, L) with t = h = w."""
    return (torch.arange(length) + start).expand(3, length)


def grid_positions(gh: int, gw: int, start: int) -> tuple[torch.Tensor, int]:
    """Qwen3-VL positions of a (gh, gw) image grid at `start`, and how far it advances."""
    h = torch.arange(gh).repeat_interleave(gw) + start
    w = torch.arange(gw).repeat(gh) + start
    t = torch.full_like(h, start)
    return torch.stack([t, h, w]), max(gh, gw)  # (3, gh*gw)


def pack_left(rows: list[dict]) -> Block:
    """Left-pad rows into one Block. Each row: embeds (L, H), pos (3, L), next_pos int, and
    optionally visual (L,) bool plus deepstack, a list of (n_visual_row, H) per layer."""
    assert rows, "pack_left needs at least one row"
    n, length = len(rows), max(r["embeds"].shape[0] for r in rows)
    h = rows[0]["embeds"].shape[-1]
    ref = rows[0]["embeds"]
    dev = ref.device
    embeds = ref.new_zeros(n, length, h)
    mask = torch.zeros(n, length, dtype=torch.long, device=dev)
    pos = torch.zeros(3, n, length, dtype=torch.long, device=dev)
    has_visual = rows[0].get("visual") is not None
    visual = torch.zeros(n, length, dtype=torch.bool, device=dev) if has_visual else None
    for i, r in enumerate(rows):
        li = r["embeds"].shape[0]
        embeds[i, length - li :] = r["embeds"]
        mask[i, length - li :] = 1
        pos[:, i, length - li :] = r["pos"]
        if has_visual:
            visual[i, length - li :] = r["visual"]
    deepstack = None
    if has_visual and rows[0].get("deepstack") is not None:
        n_layers = len(rows[0]["deepstack"])
        deepstack = [torch.cat([r["deepstack"][j] for r in rows]) for j in range(n_layers)]
    next_pos = torch.tensor([int(r["next_pos"]) for r in rows], device=dev)
    return Block(embeds, mask, pos, next_pos, visual, deepstack)


def image_block(img: ImageTokens, start_embed: torch.Tensor, end_embed: torch.Tensor) -> Block:
    """[vision_start] image tokens [vision_end] for N images of the same layout (no padding)."""
    n, t, h = img.embeds.shape  # (N, T, H)
    if img.grid is None:
        ipos, adv = text_positions(t, start=1), t
    else:
        gh, gw = img.grid
        assert gh * gw == t, f"grid {img.grid} does not hold {t} tokens"
        ipos, adv = grid_positions(gh, gw, start=1)
    pos = torch.cat([text_positions(1), ipos, text_positions(1, start=1 + adv)], dim=1)  # (3, T+2)
    embeds = torch.cat(
        [start_embed.expand(n, 1, h), img.embeds, end_embed.expand(n, 1, h)], dim=1
    )  # (N, T+2, H)
    dev = embeds.device
    visual = None
    if img.deepstack is not None:
        visual = torch.zeros(n, t + 2, dtype=torch.bool, device=dev)
        visual[:, 1 : t + 1] = True
    return Block(
        embeds=embeds,
        mask=torch.ones(n, t + 2, dtype=torch.long, device=dev),
        pos=pos[:, None, :].expand(3, n, t + 2).to(dev),
        next_pos=torch.full((n,), 2 + adv, device=dev),
        visual=visual,
        deepstack=None if img.deepstack is None else [d.reshape(-1, h) for d in img.deepstack],
    )


def text_block(embeds: torch.Tensor, n: int) -> Block:
    """A text run (L, H) shared by all N rows."""
    length, h = embeds.shape
    return Block(
        embeds=embeds.expand(n, length, h),
        mask=torch.ones(n, length, dtype=torch.long, device=embeds.device),
        pos=text_positions(length)[:, None, :].expand(3, n, length).to(embeds.device),
        next_pos=torch.full((n,), length, device=embeds.device),
    )


def _split_rows(ds: torch.Tensor, visual: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.split(ds, visual.sum(1).tolist()))


def concat(a: Block, b: Block) -> Block:
    """Append `b` after `a` row by row; `b` must be unpadded so padding stays on the left."""
    assert bool(b.mask.all()), "only the first block of a sequence may carry left padding"
    assert a.embeds.shape[0] == b.embeds.shape[0], "blocks differ in batch size"
    pos = b.pos + a.next_pos[None, :, None]
    visual = deepstack = None
    if a.visual is not None or b.visual is not None:
        av = a.visual if a.visual is not None else torch.zeros_like(a.mask, dtype=torch.bool)
        bv = b.visual if b.visual is not None else torch.zeros_like(b.mask, dtype=torch.bool)
        visual = torch.cat([av, bv], dim=1)
        # deepstack features are row-major over visual positions: row i's a-part, then b-part
        sources = [(x.deepstack, v) for x, v in ((a, av), (b, bv)) if x.deepstack is not None]
        deepstack = []
        for j in range(len(sources[0][0])):
            split = [_split_rows(ds[j], v) for ds, v in sources]
            deepstack.append(torch.cat([rows[i] for i in range(len(av)) for rows in split]))
    return Block(
        embeds=torch.cat([a.embeds, b.embeds], dim=1),
        mask=torch.cat([a.mask, b.mask], dim=1),
        pos=torch.cat([a.pos, pos], dim=2),
        next_pos=a.next_pos + b.next_pos,
        visual=visual,
        deepstack=deepstack,
    )


def repeat_rows(a: Block, c: int) -> Block:
    """Repeat every row `c` times (row i becomes rows i*c .. i*c+c-1)."""
    deepstack = None
    if a.deepstack is not None:
        deepstack = [
            torch.cat([r for r in _split_rows(d, a.visual) for _ in range(c)]) for d in a.deepstack
        ]
    return Block(
        embeds=a.embeds.repeat_interleave(c, 0),
        mask=a.mask.repeat_interleave(c, 0),
        pos=a.pos.repeat_interleave(c, 1),
        next_pos=a.next_pos.repeat_interleave(c, 0),
        visual=None if a.visual is None else a.visual.repeat_interleave(c, 0),
        deepstack=deepstack,
    )


@functools.cache
def _cache_kwarg(lm_type: type) -> str:
    """The text model's name for the KV cache argument: `cache` in recent transformers,
    `past_key_values` before. A wrong name is swallowed by **kwargs and the cache ignored."""
    params = inspect.signature(lm_type.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def run_lm(lm: nn.Module, block: Block, cache=None, past_mask=None) -> torch.Tensor:
    """Run the Qwen3-VL text model on a Block; returns the final hidden states (N, L, H)."""
    mask = block.mask if past_mask is None else torch.cat([past_mask, block.mask], dim=1)
    seen = 0 if cache is None else cache.get_seq_length()
    cache_arg = _cache_kwarg(type(lm))
    out = lm(
        inputs_embeds=block.embeds,
        attention_mask=mask,
        position_ids=block.pos,
        use_cache=cache is not None,
        visual_pos_masks=block.visual,
        deepstack_visual_embeds=block.deepstack,
        **{cache_arg: cache},
    )
    if cache is not None and cache.get_seq_length() != seen + block.embeds.shape[1]:
        import transformers

        raise RuntimeError(
            f"{type(lm).__name__} did not fill the KV cache passed as "
            f"{cache_arg!r} ({seen} -> {cache.get_seq_length()} positions after "
            f"{block.embeds.shape[1]} tokens) under transformers {transformers.__version__}"
        )
    return out.last_hidden_state


class PromptScorer(nn.Module):
    """Base of both rerankers: owns the prompt (markers, question) and the yes−no head.

    Subclasses set `self.lm` (or a property), call `_init_prompt`, and implement
    `encode(feats) -> ImageTokens`.
    """

    kind = "base"

    def _init_prompt(self, lm, head_rows: torch.Tensor, question_ids, start_id: int, end_id: int):
        # head_rows: (2, H) output-embedding rows of " yes" and " no"; frozen buffers.
        self.register_buffer("head_vec", (head_rows[0] - head_rows[1]).detach().clone())
        self.register_buffer("question_ids", torch.tensor(question_ids, dtype=torch.long))
        self.register_buffer("marker_ids", torch.tensor([start_id, end_id], dtype=torch.long))

    def _markers(self):
        emb = self.lm.embed_tokens(self.marker_ids)  # (2, H)
        return emb[0:1], emb[1:2]

    def prompt_blocks(self, q: ImageTokens, c: ImageTokens) -> tuple[Block, Block]:
        """Prefix (one row per query) and suffix (one row per candidate) of the prompt."""
        start, end = self._markers()
        prefix = image_block(q, start, end)  # (B, Tq+2)
        cand = image_block(c, start, end)  # (B*C, Tc+2)
        question = text_block(self.lm.embed_tokens(self.question_ids), cand.embeds.shape[0])
        return prefix, concat(cand, question)

    def uses_cache(self, n_cand: int) -> bool:
        """Whether scoring `n_cand` candidates per query reuses the query prefix (KV cache)."""
        return bool(self.cfg.use_kv_cache) and n_cand >= self.cfg.cache_min_candidates

    def score_tokens(self, q: ImageTokens, c: ImageTokens, n_cand: int, use_cache: bool):
        """Scores (B, C) of B query images against B*C candidate images (row-major)."""
        prefix, suffix = self.prompt_blocks(q, c)
        b = prefix.embeds.shape[0]
        if use_cache:
            cache = DynamicCache(config=self.lm.config)
            run_lm(self.lm, prefix, cache=cache)
            cache.batch_repeat_interleave(n_cand)
            suffix.pos = suffix.pos + prefix.next_pos.repeat_interleave(n_cand)[None, :, None]
            past_mask = prefix.mask.repeat_interleave(n_cand, 0)
            hidden = run_lm(self.lm, suffix, cache=cache, past_mask=past_mask)
        else:
            hidden = run_lm(self.lm, concat(repeat_rows(prefix, n_cand), suffix))
        h_last = hidden[:, -1]  # (B*C, H): left padding puts every row's last token here
        return (h_last @ self.head_vec).view(b, n_cand)
