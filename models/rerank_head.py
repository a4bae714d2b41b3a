"""The reranking prompt and scoring head shared by the gutted VLM and the full-VLM baseline.

Both models turn an image into a run of LLM-space tokens (k projected soft tokens for the
gutted model, the vision tower's merged patch tokens for the full VLM) and feed the same
Qwen3-VL language model the same prompt, a prefix per query and a suffix per candidate:

    [vision_start] query tokens [vision_end] question | [vision_start] candidate tokens [vision_end] prior similarity cue

For the "for a user" task the query is a history: each of the user's H past images enters
the prefix between its own vision markers, oldest first (`history_block`; users with fewer
images are left padded), followed (`history_summary`, on by default) by one summary image
whose tokens are the mean of the history's tokens, so the question "is the candidate
relevant to this image?" that the related-images task teaches applies to the whole history.
A model with a `HistoryPool` (the gutted model's `history_pool` = m > 0) instead passes a
learned summary: m tokens that attend over the history's H x k tokens, as one image.
The KV cache of that prefix serves all the user's candidates.

`prior` is one learned token per candidate: its engagement count in the train split, in log2
buckets (`prior_bucket`), so both rerankers read the same behavioural signal beside the
images (none when the model's `prior_buckets` is 0). `similarity` is one token per candidate
projected from its best and mean cosine to the query's images (`candidate_similarity`), each
model comparing its own untrained view of the images (`similarity_features`: our embeddings
for the gutted model, the frozen vision tower's states for the full VLM): retrieval's own
signal, which a language model otherwise has to learn to compute across the prompt.

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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicCache

# The question follows the query (one image, or a user's history) in the prefix, so the KV
# cache reads it once per query; the short cue ends every candidate, and the yes-no head
# reads the cue's last token.
DEFAULT_QUESTION = "Is the second image relevant to the first?"
DEFAULT_CUE = " Answer:"
PRIOR_BUCKETS = 16  # engagement buckets: 0, 1, 2-3, 4-7, ... up to 2^14 and more
SIMILARITIES = ("best", "mean")  # what the similarity token reads: a candidate's cosines to the query


def prior_bucket(counts, buckets: int = PRIOR_BUCKETS) -> np.ndarray:
    """Engagement counts -> int64 buckets floor(log2(1 + n)), capped at `buckets` - 1."""
    n = np.maximum(np.asarray(counts, dtype=np.float64), 0)
    return np.minimum(np.floor(np.log2(1 + n)), buckets - 1).astype(np.int64)


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


class PromptScorer(nn.Module):
    """Base of both rerankers: owns the prompt (markers, question) and the yes−no head.

    Subclasses set `self.lm` (or a property), call `_init_prompt`, and implement
    `encode(feats) -> ImageTokens`; their `stage1_parameters` include `prompt_parameters()`.
    """

    kind = "base"

    def _init_prompt(self, lm, head_rows: torch.Tensor, question_ids, start_id: int, end_id: int,
                     prior_buckets: int = 0, seed: int = 0, cue_ids=(), similarity: bool = False):
        # head_rows: (2, H) output-embedding rows of " yes" and " no"; frozen buffers.
        # cue_ids empty: the layout of checkpoints from before the cue, the whole question
        # after every candidate.
        self.register_buffer("head_vec", (head_rows[0] - head_rows[1]).detach().clone())
        self.register_buffer("question_ids", torch.tensor(question_ids, dtype=torch.long))
        self.register_buffer("cue_ids", torch.tensor(list(cue_ids), dtype=torch.long))
        self.register_buffer("marker_ids", torch.tensor([start_id, end_id], dtype=torch.long))
        self.prior = self.similarity = None
        self.history_pool: HistoryPool | None = None  # set by a model that summarises histories
        table = lm.embed_tokens.weight
        std = float(table.detach().float().std())
        if prior_buckets > 0:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                self.prior = nn.Embedding(prior_buckets, table.shape[1], dtype=table.dtype)
                nn.init.normal_(self.prior.weight, std=std)
        if similarity:
            with torch.random.fork_rng():
                torch.manual_seed(seed + 2)
                self.similarity = nn.Linear(len(SIMILARITIES), table.shape[1], dtype=table.dtype)
                nn.init.normal_(self.similarity.weight, std=std)
                nn.init.normal_(self.similarity.bias, std=std)

    def prompt_parameters(self) -> list[nn.Parameter]:
        """Trained parameters of the prompt itself: the prior's embedding, the similarity
        token's projection and the history pool, where the model has them."""
        return [p for m in (self.prior, self.similarity, self.history_pool) if m is not None for p in m.parameters()]

    def prefix_image_tokens(self, history: float) -> float:
        """Tokens of the prefix's images, vision markers included, for a query of `history`
        images (1: one query image): the history and its mean summary image, or with a
        history pool one image of the pool's m tokens."""
        if history > 1 and self.history_pool is not None:
            return self.history_pool.queries.shape[0] + 2
        images = history + (history > 1 and self.cfg.history_summary)
        return images * (self.tokens_per_image() + 2)

    def suffix_tokens(self) -> int:
        """Tokens each candidate's suffix holds beside its image and the cue: the engagement
        prior's and the similarity token (0 to 2)."""
        return int(self.prior is not None) + int(self.similarity is not None)

    def similarity_features(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, D) vectors whose cosines the similarity token reads: the model's own view of
        each image, before anything trained (a subclass says which)."""
        raise NotImplementedError

    def candidate_similarity(self, query_feats: torch.Tensor, cand_feats: torch.Tensor, b: int,
                             history: torch.Tensor | None) -> torch.Tensor:
        """(B*C, 2) [best, mean] cosine of each candidate to the query's present images (one
        image: both are its cosine), from `similarity_features`; B*H (or B) queries, B*C
        candidates, row-major."""
        q = F.normalize(self.similarity_features(query_feats).float(), dim=-1)
        q = q.view(b, -1, q.shape[-1])  # (B, H, D)
        c = F.normalize(self.similarity_features(cand_feats).float(), dim=-1).view(b, -1, q.shape[-1])
        present = torch.ones(q.shape[:2], dtype=torch.bool, device=q.device) if history is None else history
        cos = torch.einsum("bcd,bhd->bch", c, q)  # (B, C, H)
        best = cos.masked_fill(~present[:, None], -2.0).max(-1).values
        mean = (cos * present[:, None]).sum(-1) / present.sum(1).clamp(min=1)[:, None]
        return torch.stack([best, mean], dim=-1).flatten(0, 1)  # (B*C, 2)

    def text_tokens(self) -> tuple[int, int]:
        """Text tokens of the prompt in the prefix (once per query) and in each candidate's suffix."""
        q, cue = len(self.question_ids), len(self.cue_ids)
        return (q, cue) if cue else (0, q)

    def _markers(self):
        emb = self.lm.embed_tokens(self.marker_ids)  # (2, H)
        return emb[0:1], emb[1:2]

    def prompt_blocks(self, q: ImageTokens, c: ImageTokens, prior: torch.Tensor | None = None,
                      history: torch.Tensor | None = None,
                      similarity: torch.Tensor | None = None) -> tuple[Block, Block]:
        """Prefix (one row per query: the query or history, then the question) and suffix (one row
        per candidate: its image, its prior, its similarity, the cue) of the prompt;
        `prior` (B*C,) holds the candidates' engagement buckets (None: bucket 0, unknown) and
        `similarity` (B*C, 2) their `candidate_similarity` (required when the model reads it).
        With `history` (B, H) bool, `q` holds B*H history images and says which are real."""
        start, end = self._markers()
        if history is None:
            prefix = image_block(q, start, end)  # (B, Tq+2)
        elif self.history_pool is not None:
            prefix = image_block(self.history_pool(q, history), start, end)  # (B, m+2)
        else:
            if self.cfg.history_summary:  # the mean of the history as one more image, the most recent
                q = history_summary(q, history)
                history = torch.cat([history, torch.ones_like(history[:, :1])], dim=1)
            prefix = history_block(q, history, start, end)  # (B, <= H*(Tq+2)), left padded
        cand = image_block(c, start, end)  # (B*C, Tc+2)
        if self.prior is not None:
            n = cand.embeds.shape[0]
            buckets = torch.zeros(n, dtype=torch.long) if prior is None else prior.reshape(n).long()
            buckets = buckets.clamp(0, self.prior.num_embeddings - 1).to(cand.embeds.device)
            cand = concat(cand, token_block(self.prior(buckets)[:, None, :]))  # (B*C, Tc+3)
        if self.similarity is not None:
            if similarity is None:
                raise ValueError("this model reads a similarity token: pass each candidate's similarity")
            sim = self.similarity(similarity.to(cand.embeds.device, self.similarity.weight.dtype))
            cand = concat(cand, token_block(sim[:, None, :]))  # (B*C, Tc+2+prior+1)
        question = self.lm.embed_tokens(self.question_ids)
        if len(self.cue_ids):
            prefix = concat(prefix, text_block(question, prefix.embeds.shape[0]))
            tail = self.lm.embed_tokens(self.cue_ids)
        else:
            tail = question
        return prefix, concat(cand, text_block(tail, cand.embeds.shape[0]))

    def score(self, query_feats, cand_feats, use_cache: bool | None = None, prior=None, history=None) -> torch.Tensor:
        """Query features (B, ...) or, with `history` (B, H) bool, a history (B, H, ...);
        candidate features (B, C, ...); prior buckets (B, C) or None -> scores (B, C)."""
        self.check_features(query_feats, "query_feats")
        self.check_features(cand_feats, "cand_feats")
        b, c = cand_feats.shape[:2]
        if history is not None:
            query_feats = query_feats.reshape(-1, *query_feats.shape[2:])  # (B*H, ...)
            history = history.reshape(b, -1).bool().to(query_feats.device)
        cand_feats = cand_feats.reshape(b * c, *cand_feats.shape[2:])
        prepare = getattr(self, "prepare_features", None)  # frozen work, once for both uses below
        if prepare is not None:
            query_feats, cand_feats = prepare(query_feats), prepare(cand_feats)
        sim = None if self.similarity is None else self.candidate_similarity(query_feats, cand_feats, b, history)
        q, cand = self.encode(query_feats), self.encode(cand_feats)
        if use_cache is None:
            use_cache = self.uses_cache(c, 1 if history is None else int(history.sum(1).max()))
        return self.score_tokens(q, cand, c, use_cache, prior, history, sim)

    def uses_cache(self, n_cand: int, prefix_images: int = 1) -> bool:
        """Whether scoring `n_cand` candidates per query reuses the query prefix (KV cache):
        from `cache_min_candidates` for a one-image prefix, from 2 candidates for a history
        (a prefix of several images is long, and long prefixes pay from 2)."""
        least = self.cfg.cache_min_candidates if prefix_images <= 1 else 2
        return bool(self.cfg.use_kv_cache) and n_cand >= least

    def score_tokens(self, q: ImageTokens, c: ImageTokens, n_cand: int, use_cache: bool,
                     prior: torch.Tensor | None = None, history: torch.Tensor | None = None,
                     similarity: torch.Tensor | None = None):
        """Scores (B, C) of B queries against B*C candidate images (row-major), with the
        candidates' engagement buckets `prior` (B, C); a query is one image, or with
        `history` (B, H) bool, H images of which the present ones form the prefix."""
        prefix, suffix = self.prompt_blocks(q, c, prior, history, similarity)
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
