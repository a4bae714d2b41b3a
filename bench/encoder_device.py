"""Benchmark: encoder training throughput on each available device, side by side.

Trains the default encoder config for the same steps on the same seeded images, once per
device ("cpu" and, when torch sees one, "cuda"), and prints images/s and the ratio. The GPU
run uses bf16 autocast and a fused AdamW (models/train_encoder.py). Last line is JSON.

    python bench/encoder_device.py                 # cpu only here; cpu and cuda on a GPU box
    python bench/encoder_device.py --steps 40 --batch 256
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.encoder import ImageEncoder, encoder_config
from models.train_encoder import EncoderTrainConfig, train_encoder


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--size", type=int, default=224, help="stored image side (resized by the encoder)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--config", default="small")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.images)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = {}
    for device in devices:
        torch.manual_seed(0)
        model = ImageEncoder(encoder_config(args.config))
        cfg = EncoderTrainConfig(epochs=1000, max_steps=args.steps, batch_size=args.batch, device=device,
                          log_every=args.steps)  # fmt: skip
        m = train_encoder(model, pixels, labels, config=cfg)
        rows[device] = {"images_per_second": round(m["images_per_second"], 1),
                        "seconds": round(m["seconds"], 2), "final_loss": round(m["loss"][-1], 4)}  # fmt: skip
        print(device, json.dumps(rows[device]), flush=True)
    result = {"config": args.config, "steps": args.steps, "batch": args.batch, "threads": torch.get_num_threads(),
              "devices": rows}  # fmt: skip
    if "cuda" in rows:
        result["gpu"] = torch.cuda.get_device_name(0)
        result["cuda_over_cpu"] = rows["cuda"]["images_per_second"] / rows["cpu"]["images_per_second"]
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
