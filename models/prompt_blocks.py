"""The token layout of the reranking prompt: blocks of left-padded LLM-space tokens, and the
language model run over them. No scoring here (`models.rerank_head`).

A `Block` is a batch of rows of token embeddings, left padded, with an attention mask and
explicit M-RoPE position ids (text tokens: t = h = w, `text_positions`; image grids: the
Qwen3-VL 3D layout, `grid_positions`) and, for the full VLM's images, the deepstack features
the language model adds at their positions. `image_block`, `history_block`, `text_block` and
`token_block` make the pieces of a prompt (an image between its vision markers, a user's
history, a question, a learned token); `concat` joins two blocks row by row, continuing
the positions; `repeat_rows` repeats each row for its candidates; `run_lm` runs the language
model over a block, optionally after a KV cache, and returns the last position's states.
`history_summary` and `HistoryPool` make the one image that stands for a whole history.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn


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


def token_block(embeds: torch.Tensor) -> Block:
    """A run of per-row tokens (N, L, H), positioned like text."""
    n, length, _ = embeds.shape
    return Block(
        embeds=embeds,
        mask=torch.ones(n, length, dtype=torch.long, device=embeds.device),
        pos=text_positions(length)[:, None, :].expand(3, n, length).to(embeds.device),
        next_pos=torch.full((n,), length, device=embeds.device),
    )


def history_summary(img: ImageTokens, present: torch.Tensor) -> ImageTokens:
    """B*H images (row-major) -> B*(H+1): each row's images followed by their summary, the mean
    of its present images' tokens (and deepstack features), which is always present."""
    b, h = present.shape
    weight = present.to(img.embeds.dtype)[..., None, None] / present.sum(1).clamp(min=1)[:, None, None, None]

    def add(x: torch.Tensor) -> torch.Tensor:  # (B*H, T, D) -> (B*(H+1), T, D)
        x = x.view(b, h, *x.shape[1:])
        return torch.cat([x, (x * weight).sum(1, keepdim=True)], dim=1).flatten(0, 1)

    deepstack = None if img.deepstack is None else [add(d) for d in img.deepstack]
    return ImageTokens(add(img.embeds), img.grid, deepstack)


class HistoryPool(nn.Module):
    """A learned summary of a history: m query tokens attend over the history's tokens (keys
    from a learned projection plus a learned recency bias per image slot from the most
    recent, values the tokens themselves), so the summary stays a mixture of the LM-space
    tokens the model already reads. The key projection starts at zero: the untrained pool
    is the plain mean of the present images' tokens plus the recency bias."""

    SLOTS = 64  # recency slots; older images share the last one

    def __init__(self, tokens: int, dim: int, std: float):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(tokens, dim) * std)
        self.key = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.key.weight)
        self.recency = nn.Parameter(torch.zeros(tokens, self.SLOTS))

    def forward(self, img: ImageTokens, present: torch.Tensor) -> ImageTokens:
        """B*H images (row-major, `present` (B, H) bool) -> B pooled images of m tokens."""
        b, h = present.shape
        x = img.embeds.view(b, h * img.embeds.shape[1], -1)  # (B, H*k, D)
        k = img.embeds.shape[1]
        age = (h - 1 - torch.arange(h, device=x.device)).clamp(max=self.SLOTS - 1).repeat_interleave(k)
        scores = torch.einsum("md,bld->bml", self.queries.to(x.dtype), self.key(x)) / x.shape[-1] ** 0.5
        scores = scores + self.recency[:, age].to(x.dtype)
        scores = scores.masked_fill(~present.repeat_interleave(k, 1)[:, None, :], float("-inf"))
        return ImageTokens(torch.softmax(scores, dim=-1) @ x)  # (B, m, D)


def history_block(img: ImageTokens, present: torch.Tensor, start_embed: torch.Tensor,
                  end_embed: torch.Tensor) -> Block:
    """Each row's present images as [vision_start] tokens [vision_end] runs, one after another.

    `img` holds B*H images (row-major: row i's H images), `present` (B, H) bool says which
    are real; each row gets its present images in order, positioned one after another, and
    rows are left padded to the longest."""
    b, h = present.shape
    per = image_block(img, start_embed, end_embed)  # (B*H, T+2): every image positioned from 0
    t = img.embeds.shape[1]
    rows = []
    for i in range(b):
        picked = [i * h + j for j in range(h) if bool(present[i, j])]
        if not picked:
            raise ValueError(f"query {i} has an empty history")
        offsets = torch.cumsum(per.next_pos[picked], 0) - per.next_pos[picked]  # where each image starts
        row = {"embeds": per.embeds[picked].reshape(-1, per.embeds.shape[-1]),
               "pos": torch.cat([per.pos[:, r] + off for r, off in zip(picked, offsets, strict=True)], dim=1),
               "next_pos": int(per.next_pos[picked].sum())}
        if per.visual is not None:
            row["visual"] = per.visual[picked].reshape(-1)
            row["deepstack"] = [torch.cat([d[r * t: (r + 1) * t] for r in picked]) for d in per.deepstack]
        rows.append(row)
    return pack_left(rows)


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
