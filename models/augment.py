"""Batched image augmentations in plain torch, for contrastive training of the encoder.

Every function takes float images (B, 3, H, W) in [0, 1] and a `torch.Generator`, draws one
set of parameters per image, and returns a tensor of the same layout, so a seeded generator
gives the same views on every run. Random numbers are drawn on the generator's device and
moved to the images' device. `augment` chains them in the SimCLR order:

- random resized crop, with optional rotation and horizontal flip (one `grid_sample`),
- colour jitter (brightness, contrast, saturation, hue), applied with probability `jitter_p`,
- grayscale with probability `gray_p`,
- Gaussian blur with probability `blur_p` (per-image sigma, separable grouped conv),
- additive Gaussian noise with probability `noise_p`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    # Light defaults: under a CPU budget of a few hundred steps, light views learn much faster
    # than SimCLR-strength ones (README, "Why the defaults").
    crop_scale: tuple[float, float] = (0.85, 1.0)  # crop area as a fraction of the image
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio range
    max_rotation: float = 0.0  # degrees, uniform in [-max, max]
    flip_p: float = 0.5  # horizontal flip; set 0 for orientation-sensitive data (digits, text)
    jitter_p: float = 0.3  # probability of colour jitter
    brightness: float = 0.4  # factor in [1 - b, 1 + b]
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.0  # fraction of a full hue turn, in [-h, h]; 0 keeps colour as a signal
    gray_p: float = 0.1
    blur_p: float = 0.1
    blur_sigma: tuple[float, float] = (0.1, 1.5)  # pixels, at the output resolution
    noise_p: float = 0.1
    noise_std: float = 0.04


# SimCLR-strength views, for budgets of many more steps than the CPU default.
STRONG = AugmentConfig(
    crop_scale=(0.3, 1.0),
    max_rotation=10.0,
    jitter_p=0.8,
    hue=0.1,
    gray_p=0.2,
    blur_p=0.3,
    noise_p=0.3,
)


def _rand(n: int, g: torch.Generator, device: torch.device, lo=0.0, hi=1.0) -> torch.Tensor:
    return (torch.rand(n, generator=g, device=g.device) * (hi - lo) + lo).to(device)


def _check(x: torch.Tensor) -> None:
    assert x.ndim == 4 and x.shape[1] == 3 and x.is_floating_point(), (
        f"expected float images (B, 3, H, W), got {x.dtype} {tuple(x.shape)}"
    )


def random_resized_crop(
    x: torch.Tensor,
    g: torch.Generator,
    size: int | None = None,
    scale: tuple[float, float] = (0.3, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    max_rotation: float = 0.0,
    flip_p: float = 0.0,
) -> torch.Tensor:
    """Crop a random area fraction in `scale` with aspect in `ratio`, rotate, flip, resize to `size`."""
    _check(x)
    assert 0 < scale[0] <= scale[1] <= 1, f"crop scale must be within (0, 1], got {scale}"
    B, dev = x.shape[0], x.device
    size = size or x.shape[-1]
    area = _rand(B, g, dev, *scale)
    log_r = _rand(B, g, dev, math.log(ratio[0]), math.log(ratio[1]))
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)  # crop width as a fraction of the image side
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (_rand(B, g, dev) * 2 - 1) * (1 - w)  # centre, in [-1, 1] grid units
    cy = (_rand(B, g, dev) * 2 - 1) * (1 - h)
    a = _rand(B, g, dev, -1, 1) * math.radians(max_rotation)
    flip = torch.where(_rand(B, g, dev) < flip_p, -1.0, 1.0)
    cos, sin = torch.cos(a), torch.sin(a)
    theta = torch.stack(
        [
            torch.stack([w * cos * flip, -h * sin, cx], -1),
            torch.stack([w * sin * flip, h * cos, cy], -1),
        ],
        dim=1,
    )  # (B, 2, 3): output grid -> input grid
    grid = F.affine_grid(theta.to(x.dtype), [B, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)  # (B, 1, H, W)


def color_jitter(
    x: torch.Tensor,
    g: torch.Generator,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    p: float = 0.8,
) -> torch.Tensor:
    """Random brightness, contrast, saturation and hue (a YIQ rotation) per image, with probability p."""
    _check(x)
    B, dev = x.shape[0], x.device
    on = (_rand(B, g, dev) < p).to(x.dtype).view(B, 1, 1, 1)
    b = _rand(B, g, dev, 1 - brightness, 1 + brightness).view(B, 1, 1, 1)
    c = _rand(B, g, dev, 1 - contrast, 1 + contrast).view(B, 1, 1, 1)
    s = _rand(B, g, dev, 1 - saturation, 1 + saturation).view(B, 1, 1, 1)
    th = _rand(B, g, dev, -hue, hue) * 2 * math.pi
    y = x * b
    m = _gray(y).mean(dim=(2, 3), keepdim=True)
    y = (y - m) * c + m
    gr = _gray(y)
    y = (y - gr) * s + gr
    # Hue: rotate the chroma plane of YIQ by th.
    to_yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=dev
    )
    rot = torch.zeros(B, 3, 3, device=dev)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = torch.cos(th), -torch.sin(th)
    rot[:, 2, 1], rot[:, 2, 2] = torch.sin(th), torch.cos(th)
    mat = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # (B, 3, 3)
    y = torch.einsum("bij,bjhw->bihw", mat.to(x.dtype), y).clamp(0, 1)
    return on * y + (1 - on) * x


def random_grayscale(x: torch.Tensor, g: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """Replace each image by its luma, repeated over 3 channels, with probability p."""
    _check(x)
    on = (_rand(x.shape[0], g, x.device) < p).to(x.dtype).view(-1, 1, 1, 1)
    return on * _gray(x).expand_as(x) + (1 - on) * x


def random_blur(
    x: torch.Tensor, g: torch.Generator, sigma: tuple[float, float] = (0.1, 1.5), p: float = 0.3
) -> torch.Tensor:
    """Gaussian blur with a per-image sigma in `sigma`, with probability p (separable, grouped conv)."""
    _check(x)
    B, C, H, W = x.shape
    dev = x.device
    on = (_rand(B, g, dev) < p).to(x.dtype).view(B, 1, 1, 1)
    sig = _rand(B, g, dev, *sigma)
    r = max(1, math.ceil(2.5 * sigma[1]))
    t = torch.arange(-r, r + 1, device=dev, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sig[:, None].to(x.dtype)) ** 2)  # (B, 2r+1)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(C, 0)  # (B*C, 2r+1)
    y = x.reshape(1, B * C, H, W)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k[:, None, None, :], groups=B * C)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k[:, None, :, None], groups=B * C)
    return on * y.reshape(B, C, H, W) + (1 - on) * x


def random_noise(
    x: torch.Tensor, g: torch.Generator, std: float = 0.04, p: float = 0.3
) -> torch.Tensor:
    """Add Gaussian noise of a per-image std in [0, std], with probability p."""
    _check(x)
    B, dev = x.shape[0], x.device
    amp = (_rand(B, g, dev) < p).to(x.dtype) * _rand(B, g, dev, 0, std).to(x.dtype)
    noise = torch.randn(x.shape, generator=g, device=g.device).to(dev, x.dtype)
    return (x + amp.view(B, 1, 1, 1) * noise).clamp(0, 1)


def augment(
    x: torch.Tensor,
    g: torch.Generator,
    config: AugmentConfig | None = None,
    size: int | None = None,
) -> torch.Tensor:
    """One random view of every image: (B, 3, H, W) in [0, 1] -> (B, 3, size, size) in [0, 1]."""
    c = config or AugmentConfig()
    x = random_resized_crop(x, g, size, c.crop_scale, c.crop_ratio, c.max_rotation, c.flip_p)
    x = color_jitter(x, g, c.brightness, c.contrast, c.saturation, c.hue, c.jitter_p)
    x = random_grayscale(x, g, c.gray_p)
    x = random_blur(x, g, c.blur_sigma, c.blur_p)
    return random_noise(x, g, c.noise_std, c.noise_p)
