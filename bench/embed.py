"""Benchmark: our image encoder against the Qwen3-VL vision tower, in speed, FLOPs and quality.

Speed (default mode): the same seeded uint8 224 px images go through our encoder (default
"small" config, which resizes to 64 px) and through the Qwen3-VL vision tower at the built-in
tiny config, in the same process, on CPU, timed in turn `--repeats` times; the medians of images/s and
their ratio are printed. FLOPs: ours
and the tiny tower measured with `torch.utils.flop_counter.FlopCounterMode`, and an analytic
count for a production tower (default Qwen3-VL-2B at 448 px) from its published dimensions:

    T = (px / patch)^2 patches, h = hidden, i = intermediate, o = out_hidden
    patch embed   2 * T * (3 * t_patch * patch^2) * h
    per layer     2 * T * (4 h^2 + 2 h i)  +  4 * T^2 * h     (qkv + proj, MLP; QK^T and AV)
    each merger   2 * (T / m^2) * ((m^2 h)^2 + m^2 h * o)      (main merger + one per deepstack layer)

The analytic formula is also applied to the tiny tower: it equals the FlopCounterMode count of
that tower run with eager attention (sdpa's CPU flash kernel is invisible to the counter).

Quality (`--quality digits|wild|demo`): train our encoder on a split, then compare kNN@10
label precision on the held-out split: ours vs the raw-pixel PCA baseline vs the same encoder
randomly initialised. The last printed line is always one JSON object.

    python bench/embed.py                       # speed + FLOPs
    python bench/embed.py --quality wild        # digits in clutter (see models/embedding_eval)
    python bench/embed.py --quality demo --n 2000
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.embed import embed_pixels  # noqa: E402
from models.embedding_eval import digits_pixels, knn_label_precision, pixel_baseline  # noqa: E402
from models.encoder import ImageEncoder, encoder_config  # noqa: E402
from models.timing import interleaved  # noqa: E402
from models.train_encoder import EncoderTrainConfig, train_encoder  # noqa: E402


def qwen_patches(images: np.ndarray, patch: int = 16, t_patch: int = 2, merge: int = 2):
    """uint8 (B, S, S, 3) -> (pixel_values (B * gh * gw, 3 * t_patch * patch^2), grid_thw (B, 3)),
    laid out like the Qwen2/3-VL image processor: the image repeated over t_patch frames,
    normalised with mean = std = 0.5, patches ordered merge-window by merge-window."""
    B, S = images.shape[:2]
    assert S % (patch * merge) == 0, (
        f"image size {S} must be a multiple of patch * merge = {patch * merge}"
    )
    g = S // patch
    x = (
        torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
    )  # (B, 3, S, S)
    x = x[:, None].expand(B, t_patch, 3, S, S)  # (B, tp, C, S, S): a still image is repeated
    x = x.reshape(B, 1, t_patch, 3, g // merge, merge, patch, g // merge, merge, patch)
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)  # (B, gt, gh/m, gw/m, m, m, C, tp, ph, pw)
    pixel_values = x.reshape(B * g * g, 3 * t_patch * patch * patch)
    grid_thw = torch.tensor([[1, g, g]] * B)
    return pixel_values, grid_thw


def analytic_tower_flops(vision: dict, px: int) -> dict:
    """FLOPs per image of a Qwen3-VL vision tower at px x px (see the module docstring)."""
    p, tp, m = vision["patch_size"], vision["temporal_patch_size"], vision["spatial_merge_size"]
    h, i, o = vision["hidden_size"], vision["intermediate_size"], vision["out_hidden_size"]
    T = (px // p) ** 2
    embed = 2 * T * (3 * tp * p * p) * h
    layers = vision["depth"] * (2 * T * (4 * h * h + 2 * h * i) + 4 * T * T * h)
    n_merge = 1 + len(vision["deepstack_visual_indexes"])
    mergers = n_merge * 2 * (T // m**2) * ((m * m * h) ** 2 + m * m * h * o)
    return {
        "patches": T,
        "llm_tokens": T // m**2,
        "total": embed + layers + mergers,
        "patch_embed": embed,
        "layers": layers,
        "mergers": mergers,
    }


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn()
    return counter.get_total_flops()


def bench_speed(args) -> dict:
    from transformers import Qwen3VLForConditionalGeneration

    from models.qwen3vl_configs import CONFIGS, qwen3vl_config

    torch.manual_seed(0)
    images = np.random.default_rng(0).integers(
        0, 256, (args.n, args.size, args.size, 3), dtype=np.uint8
    )
    ours = ImageEncoder(encoder_config(args.encoder)).eval()
    vlm = Qwen3VLForConditionalGeneration(qwen3vl_config("tiny"))
    tower = vlm.model.visual.eval()

    def run_tower(imgs=images):
        with torch.inference_mode():
            for s in range(0, len(imgs), args.batch):
                pv, thw = qwen_patches(imgs[s : s + args.batch])
                tower(pv, thw)

    # in turn (ours, tower, ours, ...; models/timing.py): machine load hits both alike
    times = interleaved({"ours": lambda: embed_pixels(ours, images, args.batch), "tower": run_tower},
                        repeats=args.repeats)
    ours_ips, tower_ips = (args.n / statistics.median(times[name]) for name in ("ours", "tower"))
    one = images[:1]
    ours_flops = count_flops(lambda: ours(one))
    # FlopCounterMode has no formula for the CPU flash-attention kernel that sdpa dispatches to,
    # so count with eager attention (plain matmuls); that matches the analytic count exactly.
    vlm.set_attn_implementation("eager")
    tiny_flops = count_flops(lambda: tower(*qwen_patches(one)))
    tiny_analytic = analytic_tower_flops(CONFIGS["tiny"]["vision"], args.size)["total"]
    prod = analytic_tower_flops(CONFIGS[args.prod]["vision"], args.prod_px)
    print(f"{args.n} images {args.size}px, batch {args.batch}, {torch.get_num_threads()} threads")
    print(
        f"  ours ({args.encoder}, {ours.config.input_size}px)  {ours_ips:9.1f} img/s  {ours_flops / 1e6:9.1f} MFLOPs/img"
    )
    print(
        f"  Qwen3-VL tiny tower          {tower_ips:9.1f} img/s  {tiny_flops / 1e6:9.1f} MFLOPs/img"
        f" (analytic {tiny_analytic / 1e6:.1f})"
    )
    print(
        f"  {args.prod} tower @ {args.prod_px}px (analytic) {prod['total'] / 1e9:.1f} GFLOPs/img,"
        f" {prod['llm_tokens']} LLM tokens; / ours = {prod['total'] / ours_flops:,.0f}x"
    )
    return {
        "mode": "speed",
        "n_images": args.n,
        "image_px": args.size,
        "threads": torch.get_num_threads(),
        "ours_config": args.encoder,
        "ours_input_px": ours.config.input_size,
        "ours_params": ours.num_params(),
        "ours_images_per_s": round(ours_ips, 1),
        "qwen3vl_tiny_tower_images_per_s": round(tower_ips, 1),
        "speed_ratio_ours_over_tiny_tower": round(ours_ips / tower_ips, 2),
        "repeats": args.repeats,
        "ours_images_per_s_range": [round(args.n / max(times["ours"]), 1), round(args.n / min(times["ours"]), 1)],
        "tower_images_per_s_range": [round(args.n / max(times["tower"]), 1), round(args.n / min(times["tower"]), 1)],
        "ours_flops_per_image": ours_flops,
        "qwen3vl_tiny_tower_flops_per_image": tiny_flops,
        "qwen3vl_tiny_tower_flops_analytic": tiny_analytic,
        f"{args.prod}_tower_flops_per_image_{args.prod_px}px": prod["total"],
        f"{args.prod}_tower_llm_tokens_{args.prod_px}px": prod["llm_tokens"],
        "flops_ratio_prod_tower_over_ours": round(prod["total"] / ours_flops, 1),
    }


def load_quality_data(args) -> tuple[np.ndarray, np.ndarray, dict]:
    """(pixels, labels, augmentation overrides) for a quality dataset."""
    if args.quality in ("digits", "wild"):
        pixels, labels = digits_pixels(64, wild=args.quality == "wild", seed=args.seed)
        aug = {"flip_p": 0.0}  # a mirrored digit is another symbol
        if args.quality == "wild":
            aug |= {"jitter_p": 0.8, "hue": 0.5}  # a wild digit's tint is pure nuisance
        return pixels, labels, aug
    from PIL import Image

    from assets.demo.catalog import DemoCatalogConfig, write_demo_catalog

    dest = Path(args.demo_dir)
    frame = write_demo_catalog(dest, DemoCatalogConfig(n_images=args.n, size=args.size))
    names = sorted(set(frame["label"].to_list()))
    labels = np.array([names.index(v) for v in frame["label"].to_list()])
    pixels = np.stack(
        [
            np.asarray(Image.open(u).convert("RGB").resize((args.size, args.size)))
            for u in frame["uri"].to_list()
        ]
    )
    return pixels.astype(np.uint8), labels, {}


def bench_quality(args) -> dict:
    from models.augment import AugmentConfig

    pixels, labels, aug = load_quality_data(args)
    perm = np.random.default_rng(args.seed).permutation(len(labels))
    n_test = int(len(labels) * args.test_fraction)
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    torch.manual_seed(args.seed)
    model = ImageEncoder(encoder_config(args.encoder))
    random_emb = embed_pixels(model, pixels[test])
    cfg = EncoderTrainConfig(epochs=args.epochs, seed=args.seed, augment=AugmentConfig(**aug))
    train_labels = labels[train] if args.labels else None
    metrics = train_encoder(model, pixels[train], train_labels, config=cfg)
    ours = embed_pixels(model, pixels[test])
    pix = pixel_baseline(pixels, model.config.dim, fit_idx=train)[test]
    k = args.k
    res = {
        "ours": knn_label_precision(ours, labels[test], k),
        "pixel_pca": knn_label_precision(pix, labels[test], k),
        "random_init": knn_label_precision(random_emb, labels[test], k),
    }
    print(
        f"{args.quality}: {len(train)} train / {len(test)} held-out images, kNN@{k} label precision"
    )
    for name, v in res.items():
        print(f"  {name:12s} {v:.4f}")
    print(
        f"  train {metrics['seconds']:.0f}s, {metrics['steps']} steps, loss {metrics['loss'][0]:.2f}"
        f" -> {np.mean(metrics['loss'][-5:]):.2f}"
    )
    return {
        "mode": "quality",
        "dataset": args.quality,
        "n_train": len(train),
        "n_test": len(test),
        "k": k,
        "labels_used_in_training": bool(args.labels),
        "encoder": args.encoder,
        **{f"knn{k}_{n}": round(v, 4) for n, v in res.items()},
        "relative_gain_over_pixel": round(res["ours"] / res["pixel_pca"] - 1, 4),
        "train_seconds": round(metrics["seconds"], 1),
        "train_steps": metrics["steps"],
        "train_images_per_s": round(metrics["images_per_second"], 1),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=256, help="images (speed) or demo catalog size")
    ap.add_argument("--size", type=int, default=224, help="canonical image size")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--encoder", default="small")
    ap.add_argument("--prod", default="Qwen3-VL-2B")
    ap.add_argument("--prod-px", type=int, default=448)
    ap.add_argument("--quality", choices=["digits", "wild", "demo"])
    ap.add_argument("--demo-dir", default="/tmp/lensless_demo_catalog")
    ap.add_argument("--epochs", type=int, default=EncoderTrainConfig.epochs)
    ap.add_argument("--no-labels", dest="labels", action="store_false", help="self-supervised only")
    ap.add_argument("--test-fraction", type=float, default=1 / 3)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = bench_quality(args) if args.quality else bench_speed(args)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
