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
position only, so full-vocabulary logits are never materialised. The prompt's pieces are
`models.prompt_blocks` blocks: left padded, with an attention mask and explicit M-RoPE
position ids. Two scoring modes: `use_cache=False` runs every (query, candidate)
prompt whole; `use_cache=True` runs the query prefix once per query, repeats its KV cache
across the candidates and runs only the candidate suffix.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicCache

from models.prompt_blocks import (
    Block,
    HistoryPool,
    ImageTokens,
    concat,
    history_block,
    history_summary,
    image_block,
    repeat_rows,
    run_lm,
    text_block,
    token_block,
)

# The question follows the query (one image, or a user's history) in the prefix, so the KV
# cache reads it once per query; the short cue ends every candidate, and the yes-no head
# reads the cue's last token.
DEFAULT_QUESTION = "Is the second image relevant to the first?"
DEFAULT_CUE = " Answer:"
PRIOR_BUCKETS = 16  # engagement buckets: 0, 1, 2-3, 4-7, ... up to 2^14 and more
SIMILARITIES = ("best", "mean")  # what the similarity token reads: a candidate's cosines to the query


def best_and_mean_cosine(cand: torch.Tensor, query: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """(B, C, 2): each candidate's best and mean cosine to the present ones of its query's
    images, in `SIMILARITIES` order; `cand` (B, C, D) and `query` (B, H, D) unit vectors,
    `present` (B, H) bool."""
    cos = torch.einsum("bcd,bhd->bch", cand, query)  # (B, C, H)
    best = cos.masked_fill(~present[:, None], -2.0).max(-1).values
    mean = (cos * present[:, None]).sum(-1) / present.sum(1).clamp(min=1)[:, None]
    return torch.stack([best, mean], dim=-1)


def prior_bucket(counts, buckets: int = PRIOR_BUCKETS) -> np.ndarray:
    """Engagement counts -> int64 buckets floor(log2(1 + n)), capped at `buckets` - 1."""
    n = np.maximum(np.asarray(counts, dtype=np.float64), 0)
    return np.minimum(np.floor(np.log2(1 + n)), buckets - 1).astype(np.int64)


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
        return best_and_mean_cosine(c, q, present).flatten(0, 1)  # (B*C, 2)

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
