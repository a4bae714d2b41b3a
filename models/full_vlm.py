"""The full-VLM baseline: the same Qwen3-VL with its vision tower, scoring from pixels.

It exists so the report can compare quality and cost against the gutted model. Images are
resized to `resolution` (default 224 px: 14×14 patches of 16 px, merged 2×2 into 7×7 = 49
LLM tokens; one LLM token per 32×32 pixels), normalised like the Qwen3-VL processor
(mean 0.5, std 0.5), duplicated to the temporal patch of 2 and flattened in the processor's
merge-window order. The vision tower's merged tokens and its deepstack features enter the
same prompt, head and loss as the gutted model (models/rerank_head.py).

What is trained (the "projector-equivalent"): the vision→LLM mergers (`visual.merger` and
`visual.deepstack_merger_list`) in stage 1, plus LoRA on the language model in stage 2. The
vision blocks stay frozen, like the gutted model's encoder, which is trained elsewhere. So
training runs the frozen blocks once per image (`prepare_features`) and only the mergers and
the LM per step; scoring from pixels (inference, cost) runs the whole tower every time.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen3VLForConditionalGeneration

from models.gutted_vlm import base_identity, random_language_model
from models.prompt_blocks import ImageTokens
from models.qwen3vl_configs import config_names, qwen3vl_config
from models.rerank_head import DEFAULT_CUE, DEFAULT_QUESTION, PRIOR_BUCKETS, PromptScorer
from models.tokenizer import build_tiny_tokenizer, encode_text, load_tokenizer, single_token_id

IMAGE_MEAN = 0.5  # Qwen3-VL processor normalisation
IMAGE_STD = 0.5


@dataclass
class FullVLMConfig:
    base: str = "tiny"  # a named config (random init) or a local checkpoint dir with vision weights
    resolution: int = 224  # square input size in px; (resolution / 32)^2 LLM tokens per image
    question: str = DEFAULT_QUESTION  # fixed question, after the query (in the cached prefix)
    cue: str = DEFAULT_CUE  # after each candidate; "" puts the question there (older checkpoints)
    yes: str = " yes"  # answer tokens whose logit difference is the score
    no: str = " no"
    use_kv_cache: bool = True  # run the long query prefix once per query, not once per candidate
    cache_min_candidates: int = 2  # the long prefix pays from 2 candidates
    prior_buckets: int = PRIOR_BUCKETS  # engagement-prior token per candidate (0 = none)
    # a token per candidate from its best and mean cosine to the query's images (False = none)
    similarity_token: bool = True
    history_summary: bool = True  # a user's history ends with the mean of its images' tokens
    seed: int = 0  # random init of a named base and of the prior


def write_tiny_checkpoint(directory: str | Path, seed: int = 0, max_shard_size=None) -> Path:
    """Save a random tiny Qwen3-VL (vision weights included) plus tokenizer.json, for tests
    and benchmarks: a stand-in for a real checkpoint directory."""
    directory = Path(directory)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(qwen3vl_config("tiny"))
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(str(directory), **kwargs)
    build_tiny_tokenizer().save(str(directory / "tokenizer.json"))
    return directory


def patchify(pixels: torch.Tensor, resolution: int, patch: int, merge: int, temporal: int):
    """uint8 (N, H, W, 3) -> (pixel_values (N*P, 3*temporal*patch^2), grid_thw (N, 3))."""
    n = pixels.shape[0]
    x = pixels.permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W)
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True)
    x = (x - IMAGE_MEAN) / IMAGE_STD
    g = resolution // patch
    x = x[:, None].expand(n, temporal, 3, resolution, resolution)  # a still image: T copies
    x = x.reshape(n, temporal, 3, g // merge, merge, patch, g // merge, merge, patch)
    # same order as the Qwen2/3-VL processor: merge windows, then (C, T, ph, pw) per patch
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (N, gh/m, gw/m, m, m, 3, T, p, p)
    values = x.reshape(n * g * g, 3 * temporal * patch * patch)
    grid = torch.tensor([[1, g, g]] * n, dtype=torch.long, device=pixels.device)
    return values, grid


class FullVLMReranker(PromptScorer):
    """Scores (query, candidate) pixel pairs with Qwen3-VL's vision tower + LM + yes−no head."""

    kind = "full_vlm"
    feature_kind = "pixels"

    def __init__(self, cfg: FullVLMConfig, vlm: Qwen3VLForConditionalGeneration, tokenizer):
        super().__init__()
        self.cfg, self.vlm, self.tokenizer = cfg, vlm, tokenizer
        self.vlm_config = vlm.config
        self.base_identity = base_identity(cfg.base, cfg.seed)
        vc = vlm.config.vision_config
        self.patch, self.merge, self.temporal = (
            vc.patch_size,
            vc.spatial_merge_size,
            vc.temporal_patch_size,
        )
        unit = self.patch * self.merge
        if cfg.resolution < unit or cfg.resolution % unit:
            raise ValueError(
                f"resolution must be a positive multiple of {unit} (patch {self.patch} × merge "
                f"{self.merge}), got {cfg.resolution}"
            )
        head_ids = [single_token_id(tokenizer, cfg.yes), single_token_id(tokenizer, cfg.no)]
        rows = vlm.get_output_embeddings().weight[head_ids].detach().float()
        self._init_prompt(
            self.lm,
            rows,
            encode_text(tokenizer, cfg.question),
            vlm.config.vision_start_token_id,
            vlm.config.vision_end_token_id,
            cfg.prior_buckets,
            cfg.seed,
            encode_text(tokenizer, cfg.cue) if cfg.cue else (),
            cfg.similarity_token,
        )
        for p in self.vlm.parameters():
            p.requires_grad_(False)

    @property
    def lm(self) -> nn.Module:
        return self.vlm.model.language_model

    def stage1_parameters(self) -> list[nn.Parameter]:
        """Parameters trained in stage 1: the vision→LLM mergers (main + deepstack) and the
        prompt's prior."""
        visual = self.vlm.model.visual
        return (list(visual.merger.parameters()) + list(visual.deepstack_merger_list.parameters())
                + self.prompt_parameters())

    def grid(self) -> int:
        """Merged grid side: LLM tokens per image = grid()^2."""
        return self.cfg.resolution // (self.patch * self.merge)

    def similarity_features(self, feats: torch.Tensor) -> torch.Tensor:
        """What the similarity token's cosines compare: the frozen vision tower's states,
        averaged over the image's patches (before the trained mergers)."""
        return self.prepare_features(feats)[:, 0].mean(1)  # (N, Hv)

    def tokens_per_image(self) -> int:
        """LLM tokens one image costs (merged patches, without the two vision markers)."""
        return self.grid() ** 2

    def check_features(self, pixels: torch.Tensor, what: str = "features") -> None:
        """Raise unless pixels are uint8 (…, H, W, 3) or prepared float states (…, L, P, Hv)."""
        hv = self.vlm.config.vision_config.hidden_size
        p = (self.cfg.resolution // self.patch) ** 2
        if pixels.is_floating_point() and tuple(pixels.shape[-2:]) == (p, hv):
            return
        if pixels.dtype != torch.uint8 or pixels.ndim < 4 or pixels.shape[-1] != 3:
            raise ValueError(
                f"{what} must be uint8 pixels (..., H, W, 3) or prepared tower states (..., {p}, "
                f"{hv}), got shape {tuple(pixels.shape)} dtype {pixels.dtype}"
            )

    @contextmanager
    def _mergers_detached(self):
        """Run the tower without its mergers, so it returns the frozen per-patch states."""
        visual = self.vlm.model.visual
        merger, deep = visual.merger, visual.deepstack_merger_list
        visual.merger = nn.Identity()
        visual.deepstack_merger_list = nn.ModuleList(nn.Identity() for _ in deep)
        try:
            yield visual
        finally:
            visual.merger, visual.deepstack_merger_list = merger, deep

    @torch.no_grad()
    def prepare_features(self, pixels: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> frozen tower states (N, 1 + n_deepstack, P, Hv).

        The vision blocks are frozen, so their outputs can be computed once per image; only
        the mergers (and the LM) train. Already-prepared float states pass through unchanged.
        """
        if pixels.is_floating_point() and pixels.ndim == 4:
            return pixels
        self.check_features(pixels)
        out = []
        with self._mergers_detached() as visual:
            for i in range(0, len(pixels), batch):
                chunk = pixels[i : i + batch]
                values, grid_thw = patchify(
                    chunk, self.cfg.resolution, self.patch, self.merge, self.temporal
                )
                o = visual(values.to(visual.dtype), grid_thw=grid_thw)
                states = [o.pooler_output, *o.deepstack_features]  # each (n*P, Hv)
                out.append(torch.stack([s.view(len(chunk), -1, s.shape[-1]) for s in states], 1))
        return torch.cat(out).float()  # (N, 1 + n_ds, P, Hv)

    def encode(self, feats: torch.Tensor) -> ImageTokens:
        """Pixels uint8 (N, H, W, 3) or prepared states -> merged tokens (N, g*g, H) + deepstack."""
        visual = self.vlm.model.visual
        states = self.prepare_features(feats).to(visual.dtype)  # (N, 1 + n_ds, P, Hv)
        n, t = states.shape[0], self.tokens_per_image()
        embeds = visual.merger(states[:, 0].reshape(-1, states.shape[-1])).view(n, t, -1)
        deepstack = [
            m(states[:, j + 1].reshape(-1, states.shape[-1])).view(n, t, -1)
            for j, m in enumerate(visual.deepstack_merger_list)
        ]
        return ImageTokens(embeds, grid=(self.grid(), self.grid()), deepstack=deepstack)


def build_full_vlm(cfg: FullVLMConfig | None = None) -> FullVLMReranker:
    """Build the full-VLM baseline from a named config (random init) or a checkpoint dir."""
    cfg = cfg or FullVLMConfig()
    if cfg.base in config_names():
        config = qwen3vl_config(cfg.base)
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            vlm = Qwen3VLForConditionalGeneration(config)
        # the same seeded LM as build_gutted, so both rerankers sit on one language model
        vlm.model.language_model.load_state_dict(
            random_language_model(config, cfg.seed).state_dict()
        )
        tok = build_tiny_tokenizer()
    else:
        base_identity(cfg.base, cfg.seed)  # clear error for a path that is not a checkpoint
        vlm, loading = Qwen3VLForConditionalGeneration.from_pretrained(cfg.base, dtype=torch.float32,
                                                                       output_loading_info=True)
        if loading["missing_keys"]:  # transformers would initialise them at random, unseeded
            missing = sorted(loading["missing_keys"])
            raise ValueError(f"checkpoint {cfg.base} lacks {len(missing)} of the model's tensors "
                             f"(e.g. {', '.join(missing[:3])}): a partial or different checkpoint")
        tok = load_tokenizer(cfg.base)
    return FullVLMReranker(cfg, vlm.eval(), tok)
