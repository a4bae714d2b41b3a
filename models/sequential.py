"""The non-LLM peer: a small sequential recommender over the same inputs as the gutted model.

It answers what the language model adds over a cheap model. Same inputs (the in-house
embeddings of the query image or of a user's history, oldest first; each candidate's
embedding and engagement prior), same groups, loss and training loop
(`models.train_reranker`, stage 1 only: every parameter is trained, there is no LoRA).

A SASRec-style encoder: the history's embeddings, projected to `hidden` with learned
positions (counted from the most recent image), go through one causal transformer layer;
the output at the most recent image is the user. A candidate is scored by an MLP over
[user * candidate, user, candidate, prior embedding, best and mean cosine to the history],
the last two being retrieval's own signal and the history's centroid, so the peer starts
from what the cosine order knows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.rerank_head import PRIOR_BUCKETS, best_and_mean_cosine


@dataclass
class SequentialConfig:
    embed_dim: int = 128  # d: dimension of our image embeddings
    hidden: int = 64  # width of the encoder and the scoring MLP
    max_history: int = 64  # positions the encoder knows (histories are cut to the latest)
    heads: int = 2  # attention heads of the transformer layer
    prior_buckets: int = PRIOR_BUCKETS  # engagement-prior buckets (0 = no prior)
    seed: int = 0  # random init


class SequentialRecommender(nn.Module):
    """Scores candidates for a query image or a history with a small transformer and an MLP."""

    kind = "sequential"
    feature_kind = "embedding"

    def __init__(self, cfg: SequentialConfig):
        super().__init__()
        self.cfg = cfg
        self.base_identity = {"source": "none", "seed": cfg.seed}
        h = cfg.hidden
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            self.item = nn.Linear(cfg.embed_dim, h)
            self.position = nn.Embedding(cfg.max_history, h)
            self.encoder = nn.TransformerEncoderLayer(h, cfg.heads, 2 * h, dropout=0.0, batch_first=True)
            self.prior = nn.Embedding(cfg.prior_buckets, h) if cfg.prior_buckets > 0 else None
            width = 3 * h + (h if self.prior is not None else 0) + 2
            self.head = nn.Sequential(nn.Linear(width, h), nn.GELU(), nn.Linear(h, 1))

    def stage1_parameters(self) -> list[nn.Parameter]:
        """Everything: the peer has no frozen base."""
        return list(self.parameters())

    def check_features(self, feats: torch.Tensor, what: str = "features") -> None:
        """Raise when features are not float (…, d) with d == cfg.embed_dim."""
        if feats.shape[-1] != self.cfg.embed_dim or not feats.is_floating_point():
            raise ValueError(f"{what} must be float embeddings of dimension {self.cfg.embed_dim}, "
                             f"got shape {tuple(feats.shape)} dtype {feats.dtype}")

    def tokens_per_image(self) -> int:
        """No language-model tokens: the peer has no LLM."""
        return 0

    def suffix_tokens(self) -> int:
        """No language-model tokens: the peer has no LLM."""
        return 0

    def user(self, hist: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """History (B, H, d) with `present` (B, H) (left padded) -> user vectors (B, hidden)."""
        hist, present = hist[:, -self.cfg.max_history:], present[:, -self.cfg.max_history:]
        b, n, _ = hist.shape
        age = torch.arange(n - 1, -1, -1, device=hist.device)  # 0 = the most recent image
        x = self.item(hist) + self.position(age)[None]
        causal = torch.triu(torch.ones(n, n, dtype=torch.bool, device=hist.device), 1)
        padding = ~present
        padding[:, -1] = False  # the most recent position is always real (histories are left padded)
        out = self.encoder(x, src_mask=causal, src_key_padding_mask=padding)
        return out[:, -1]  # (B, hidden): the encoder's state at the most recent image

    def score(self, query_feats, cand_feats, use_cache: bool | None = None, prior=None, history=None) -> torch.Tensor:
        """Query (B, d) or history (B, H, d) with `history` (B, H) bool; candidates (B, C, d);
        prior buckets (B, C) or None -> scores (B, C). `use_cache` is accepted and unused."""
        self.check_features(query_feats, "query_feats")
        self.check_features(cand_feats, "cand_feats")
        if history is None:
            query_feats, history = query_feats[:, None], torch.ones(len(query_feats), 1, dtype=torch.bool)
        present = history.to(query_feats.device).bool()
        b, c, _ = cand_feats.shape
        u = self.user(query_feats, present)[:, None].expand(b, c, -1)  # (B, C, h)
        v = self.item(cand_feats)  # (B, C, h)
        parts = [u * v, u, v]
        if self.prior is not None:
            buckets = torch.zeros(b, c, dtype=torch.long) if prior is None else prior.long()
            parts.append(self.prior(buckets.clamp(0, self.prior.num_embeddings - 1).to(v.device)))
        # (B, C, 2): the best cosine to the history, and the mean, i.e. to the history's centroid
        parts.append(best_and_mean_cosine(cand_feats, query_feats, present))
        return self.head(torch.cat(parts, dim=-1)).squeeze(-1)


def build_sequential(cfg: SequentialConfig | None = None) -> SequentialRecommender:
    """A seeded, untrained peer."""
    cfg = cfg or SequentialConfig()
    if cfg.hidden % cfg.heads:
        raise ValueError(f"hidden ({cfg.hidden}) must be a multiple of heads ({cfg.heads})")
    return SequentialRecommender(cfg)
