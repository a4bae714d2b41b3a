"""The gutted VLM: Qwen3-VL's language model alone, fed our image embeddings as soft tokens.

`build_gutted(cfg)` makes a `GuttedReranker` from either the built-in tiny config (random,
seeded init and the built-in tokenizer; the default, since nothing can be downloaded) or a
local Qwen3-VL checkpoint directory. From a checkpoint only the `model.language_model.*`
tensors are read through `safetensors.safe_open` (sharded checkpoints included); of
`lm_head.weight` (untied embeddings) only the " yes" and " no" rows are sliced. Vision
tensors are never read. A projector MLP maps each d-dimensional embedding to k soft tokens;
the prompt and the yes−no head are shared with the full VLM (models/rerank_head.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import Qwen3VLConfig, Qwen3VLTextModel
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

from models.prompt_blocks import HistoryPool, ImageTokens
from models.qwen3vl_configs import config_names, qwen3vl_config
from models.rerank_head import DEFAULT_CUE, DEFAULT_QUESTION, PRIOR_BUCKETS, PromptScorer
from models.tokenizer import build_tiny_tokenizer, encode_text, load_tokenizer, single_token_id

LM_PREFIX = "model.language_model."
LM_HEAD = "lm_head.weight"


@dataclass
class GuttedConfig:
    base: str = "tiny"  # a named config (models/qwen3vl_configs.py) or a local checkpoint dir
    embed_dim: int = 128  # d: dimension of our image embeddings
    num_tokens: int = 4  # k: soft tokens per image
    proj_hidden: int = 512  # width of the projector MLP's hidden layer
    question: str = DEFAULT_QUESTION  # fixed question, after the query (in the cached prefix)
    cue: str = DEFAULT_CUE  # after each candidate; "" puts the question there (older checkpoints)
    yes: str = " yes"  # answer tokens whose logit difference is the score
    no: str = " no"
    use_kv_cache: bool = True  # run the query prefix once per query, not once per candidate
    # The short prefix pays in time only with enough candidates per query; below this, no cache.
    cache_min_candidates: int = 16
    prior_buckets: int = PRIOR_BUCKETS  # engagement-prior token per candidate (0 = none)
    # a token per candidate from its best and mean cosine to the query's images (False = none)
    similarity_token: bool = True
    history_summary: bool = True  # a user's history ends with the mean of its images' tokens
    # 0: a user's history enters the prompt as its H x k soft tokens (and their mean);
    # m > 0: a learned pool (rerank_head.HistoryPool) summarises them into m tokens instead
    history_pool: int = 0
    seed: int = 0  # random init of a named base (LM), the projector and the prior


def base_identity(base: str, seed: int) -> dict:
    """What identifies the frozen base: config name + seed, or checkpoint dir + config hash."""
    if base in config_names():
        return {"source": "config", "name": base, "seed": seed}
    cfg_path = Path(base) / "config.json"
    if not cfg_path.exists():
        raise ValueError(
            f"base {base!r} is neither a named config ({', '.join(config_names())}) "
            "nor a checkpoint directory with config.json"
        )
    digest = hashlib.sha256(cfg_path.read_bytes()).hexdigest()
    return {"source": "checkpoint", "path": str(Path(base).resolve()), "config_sha256": digest}


def _weight_files(directory: Path) -> dict[str, str]:
    """Map tensor name -> safetensors file, from the shard index or the single file."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        return json.loads(index.read_text())["weight_map"]
    single = directory / "model.safetensors"
    if not single.exists():
        raise FileNotFoundError(
            f"checkpoint {directory} has neither model.safetensors nor model.safetensors.index.json"
        )
    with safe_open(str(single), framework="pt") as f:
        return dict.fromkeys(f.keys(), "model.safetensors")


def read_language_model(
    directory: str | Path, head_ids: tuple[int, int]
) -> tuple[Qwen3VLConfig, dict[str, torch.Tensor], torch.Tensor]:
    """Read a checkpoint's language-model tensors and output-embedding rows `head_ids`.

    Returns (full config, text-model state dict without the prefix, head rows (2, H)). Only
    keys under `model.language_model.` are requested, plus two row slices of `lm_head.weight`
    when the embeddings are untied; vision tensors are never opened.
    """
    directory = Path(directory)
    config = Qwen3VLConfig.from_pretrained(str(directory))
    weight_map = _weight_files(directory)
    wanted = [k for k in weight_map if k.startswith(LM_PREFIX)]
    if not wanted:
        sample = ", ".join(sorted(weight_map)[:5])
        raise ValueError(
            f"checkpoint {directory} has no {LM_PREFIX}* tensors (a Qwen3-VL checkpoint is "
            f"needed); first keys found: {sample or 'none'}"
        )
    state: dict[str, torch.Tensor] = {}
    by_file: dict[str, list[str]] = {}
    for k in wanted:
        by_file.setdefault(weight_map[k], []).append(k)
    for fname, keys in sorted(by_file.items()):
        with safe_open(str(directory / fname), framework="pt") as f:
            for k in keys:
                state[k[len(LM_PREFIX) :]] = f.get_tensor(k)
    if not config.tie_word_embeddings and LM_HEAD not in weight_map:
        raise ValueError(f"checkpoint {directory} unties its output embeddings (tie_word_embeddings: false) "
                         f"but holds no {LM_HEAD}: a partial checkpoint")
    if config.tie_word_embeddings:
        rows = state["embed_tokens.weight"][list(head_ids)]
    else:
        with safe_open(str(directory / weight_map[LM_HEAD]), framework="pt") as f:
            sl = f.get_slice(LM_HEAD)
            rows = torch.cat([sl[i : i + 1] for i in head_ids])
    return config, state, rows.float()


class Projector(nn.Module):
    """MLP from a d-dim embedding to k soft tokens of the LLM's hidden size."""

    def __init__(self, embed_dim: int, num_tokens: int, hidden: int, out_dim: int):
        super().__init__()
        self.num_tokens, self.out_dim = num_tokens, out_dim
        self.net = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, num_tokens * out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(*x.shape[:-1], self.num_tokens, self.out_dim)  # (..., k, H)


class GuttedReranker(PromptScorer):
    """Scores (query, candidate) embedding pairs with the Qwen3-VL LM and a yes−no head."""

    kind = "gutted"
    feature_kind = "embedding"

    def __init__(self, cfg: GuttedConfig, lm: Qwen3VLTextModel, head_rows, tokenizer, config):
        super().__init__()
        self.cfg, self.lm, self.tokenizer, self.vlm_config = cfg, lm, tokenizer, config
        self.base_identity = base_identity(cfg.base, cfg.seed)
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            self.projector = Projector(
                cfg.embed_dim, cfg.num_tokens, cfg.proj_hidden, lm.config.hidden_size
            )
        self._init_prompt(
            lm,
            head_rows,
            encode_text(tokenizer, cfg.question),
            config.vision_start_token_id,
            config.vision_end_token_id,
            cfg.prior_buckets,
            cfg.seed,
            encode_text(tokenizer, cfg.cue) if cfg.cue else (),
            cfg.similarity_token,
        )
        if cfg.history_pool > 0:
            with torch.random.fork_rng():
                torch.manual_seed(cfg.seed + 1)
                std = float(lm.embed_tokens.weight.detach().float().std())
                self.history_pool = HistoryPool(cfg.history_pool, lm.config.hidden_size, std)
        for p in self.lm.parameters():
            p.requires_grad_(False)

    def stage1_parameters(self) -> list[nn.Parameter]:
        """Parameters trained in stage 1: the projector, the prompt's prior and history pool."""
        return list(self.projector.parameters()) + self.prompt_parameters()

    def check_features(self, feats: torch.Tensor, what: str = "features") -> None:
        """Raise when features are not float (…, d) with d == cfg.embed_dim."""
        if feats.shape[-1] != self.cfg.embed_dim or not feats.is_floating_point():
            raise ValueError(
                f"{what} must be float embeddings of dimension {self.cfg.embed_dim} "
                f"(cfg.embed_dim), got shape {tuple(feats.shape)} dtype {feats.dtype}"
            )

    def encode(self, feats: torch.Tensor) -> ImageTokens:
        """Embeddings (N, d) -> k soft tokens (N, k, H)."""
        self.check_features(feats)
        return ImageTokens(self.projector(feats.to(next(self.projector.parameters()).dtype)))

    def similarity_features(self, feats: torch.Tensor) -> torch.Tensor:
        """What the similarity token's cosines compare: our embeddings, as they are."""
        return feats

    def tokens_per_image(self) -> int:
        """LLM tokens one image costs (soft tokens, without the two vision markers)."""
        return self.cfg.num_tokens


def random_language_model(config: Qwen3VLConfig, seed: int) -> Qwen3VLTextModel:
    """The seeded random LM of a named config; the full VLM reuses it, so both share one LM."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Qwen3VLTextModel(config.text_config)


def build_gutted(cfg: GuttedConfig | None = None) -> GuttedReranker:
    """Build the gutted reranker from a named config (random init) or a checkpoint directory."""
    cfg = cfg or GuttedConfig()
    if cfg.num_tokens < 1:
        raise ValueError(f"num_tokens (k) must be >= 1, got {cfg.num_tokens}")
    if cfg.history_pool < 0:
        raise ValueError(f"history_pool (m) must be >= 0, got {cfg.history_pool}")
    if cfg.embed_dim < 1:
        raise ValueError(f"embed_dim (d) must be >= 1, got {cfg.embed_dim}")
    if cfg.base in config_names():
        config = qwen3vl_config(cfg.base)
        tok = build_tiny_tokenizer()
        head_ids = (single_token_id(tok, cfg.yes), single_token_id(tok, cfg.no))
        if not config.tie_word_embeddings:
            raise ValueError(f"named base {cfg.base!r} has untied embeddings; use a checkpoint dir")
        lm = random_language_model(config, cfg.seed)
        rows = lm.embed_tokens.weight[list(head_ids)].detach()
        return GuttedReranker(cfg, lm.eval(), rows, tok, config)
    base_identity(cfg.base, cfg.seed)  # clear error for a path that is not a checkpoint
    tok = load_tokenizer(cfg.base)
    head_ids = (single_token_id(tok, cfg.yes), single_token_id(tok, cfg.no))
    config, state, rows = read_language_model(cfg.base, head_ids)
    text_cfg = config.text_config
    with torch.device("meta"):
        lm = Qwen3VLTextModel(text_cfg)
    missing = sorted(set(lm.state_dict()) - set(state))
    if missing:
        raise ValueError(f"checkpoint {cfg.base} lacks language-model tensors: {missing[:5]}")
    lm.load_state_dict(state, strict=True, assign=True)
    lm.rotary_emb = Qwen3VLTextRotaryEmbedding(text_cfg)  # non-persistent buffers were on meta
    return GuttedReranker(cfg, lm.float().eval(), rows, tok, config)
