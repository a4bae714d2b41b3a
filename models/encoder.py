"""The in-house image encoder: a small residual conv net trained from scratch.

Pixels come in as the pipeline stores them, uint8 (B, S, S, 3) at the canonical resolution,
or as float (B, 3, H, W) in [0, 1] (what the augmentations produce). The encoder resizes them
to a small square `input_size` (antialiased) so that CPU training and inference stay cheap,
runs a stride-2 conv stem and a few residual stages, average-pools, and projects to a
d-dimensional L2-normalised embedding. Architectures are data: `encoder_names()` lists the
registered configs and `encoder_config(name)` returns one. A checkpoint is a safetensors file
with the `EncoderConfig` stored beside it (models/checkpoint.py), never a pickle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.checkpoint import config_kwargs, load_checkpoint, save_checkpoint


@dataclass(frozen=True)
class EncoderConfig:
    dim: int = 128  # output embedding size; the output is L2-normalised
    input_size: int = 64  # pixels are resized to input_size x input_size before the stem
    stem_downsample: int = 2  # stride-2 3x3 convs in the stem: 64 px -> 16 x 16 feature map
    # Channels per stage; every stage after the first halves the feature map.
    widths: tuple[int, ...] = (32, 64, 128)
    depths: tuple[int, ...] = (1, 1, 1)  # residual blocks per stage
    mean: float = 0.45  # input normalisation, applied to [0, 1] pixels of every channel
    std: float = 0.25


ENCODER_CONFIGS: dict[str, EncoderConfig] = {
    "small": EncoderConfig(),  # the default: 0.5M params, 36 MFLOPs per image
    "tiny": EncoderConfig(dim=32, input_size=32, stem_downsample=1, widths=(16, 32), depths=(1, 1)),
    "base": EncoderConfig(input_size=96, widths=(48, 96, 192), depths=(1, 2, 2)),
}


def encoder_names() -> list[str]:
    """Names accepted by `encoder_config`."""
    return list(ENCODER_CONFIGS)


def encoder_config(name: str = "small", **overrides) -> EncoderConfig:
    """The registered config `name`, with dataclass fields replaced by `overrides`."""
    if name not in ENCODER_CONFIGS:
        raise ValueError(f"Unknown encoder config {name!r}; valid: {', '.join(ENCODER_CONFIGS)}")
    return dataclasses.replace(ENCODER_CONFIGS[name], **overrides)


def _conv_bn(ci: int, co: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(ci, co, 3, stride, 1, bias=False), nn.BatchNorm2d(co), nn.ReLU(inplace=True)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; the last BN starts at zero so each block starts as identity."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(x + self.bn2(self.conv2(y)), inplace=True)


class ImageEncoder(nn.Module):
    """Pixels -> (B, dim) unit-norm embeddings. See the module docstring."""

    def __init__(self, config: EncoderConfig | None = None):
        super().__init__()
        config = config or EncoderConfig()
        assert len(config.widths) == len(config.depths) > 0, (
            f"widths {config.widths} and depths {config.depths} must be non-empty and equal length"
        )
        assert config.input_size % (2 ** (config.stem_downsample + len(config.widths) - 1)) == 0, (
            f"input_size {config.input_size} must be divisible by "
            f"2**(stem_downsample + stages - 1) = {2 ** (config.stem_downsample + len(config.widths) - 1)}"
        )
        self.config = config
        w0 = config.widths[0]
        stem, ci = [], 3
        for i in range(config.stem_downsample):
            co = w0 if i == config.stem_downsample - 1 else max(w0 // 2, 8)
            stem.append(_conv_bn(ci, co, 2))
            ci = co
        if not stem:
            stem.append(_conv_bn(3, w0, 1))
            ci = w0
        self.stem = nn.Sequential(*stem)
        stages = []
        for i, (w, depth) in enumerate(zip(config.widths, config.depths, strict=True)):
            layers = [] if i == 0 and ci == w else [_conv_bn(ci, w, 1 if i == 0 else 2)]
            layers += [BasicBlock(w) for _ in range(depth)]
            stages.append(nn.Sequential(*layers))
            ci = w
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(ci, config.dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def feature_dim(self) -> int:
        return self.config.widths[-1]

    def preprocess(self, pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (B, S, S, 3) or float (B, 3, H, W) in [0, 1] -> float (B, 3, s, s), s = input_size."""
        if isinstance(pixels, np.ndarray):
            # torch warns on read-only arrays (memmaps); a copy of one batch is cheap.
            pixels = torch.from_numpy(pixels if pixels.flags.writeable else pixels.copy())
        device = next(self.parameters()).device
        x = pixels.to(device)
        if x.dtype == torch.uint8:
            assert x.ndim == 4 and x.shape[-1] == 3, (
                f"uint8 pixels must be (B, S, S, 3), got {tuple(x.shape)}"
            )
            x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, S, S)
        assert x.ndim == 4 and x.shape[1] == 3, (
            f"float pixels must be (B, 3, H, W), got {tuple(x.shape)}"
        )
        s = self.config.input_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed (B, 3, s, s) -> pooled features (B, widths[-1]) before the head."""
        x = (x - self.config.mean) / self.config.std
        x = x.contiguous(memory_format=torch.channels_last)  # faster convs on CPU
        x = self.stages(self.stem(x))  # (B, C, s / 2**k, s / 2**k)
        return x.mean(dim=(2, 3))  # (B, C)

    def forward(self, pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
        z = self.head(self.features(self.preprocess(pixels)))  # (B, dim)
        return F.normalize(z.float(), dim=-1)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write weights (safetensors) and the `EncoderConfig` (JSON) into `directory`."""
        return save_checkpoint(directory, self.state_dict(), self.config, extra=extra)

    @classmethod
    def from_checkpoint(cls, directory: str | Path, map_location: str = "cpu") -> ImageEncoder:
        """Rebuild an encoder from a directory written by `save`; returned in eval mode."""
        tensors, cfg, _ = load_checkpoint(directory)
        cfg = {k: tuple(v) if isinstance(v, list) else v
               for k, v in config_kwargs(EncoderConfig, cfg, directory).items()}
        model = cls(EncoderConfig(**cfg))
        model.load_state_dict(tensors, strict=True)
        return model.to(map_location).eval()
