"""Embedding assets: `image_encoder` (trained on every batch) and `image_embeddings` (per batch)."""

import time

import dagster as dg
import numpy as np
import polars as pl

from assets.compute import GPU_STEP_TAGS, TRAIN_POOL
from assets.embeddings.quality import evaluate_encoder, train_pairs_rows, training_rows
from assets.ingestion.assets import engagement_events, image_batches, raw_images
from assets.plots import line_plot, md_image, md_table
from assets.settings import settings_metadata
from assets.store.lake import catalog, load_pixels, pixels_path, read_table, write_table
from assets.store.models import current_dir, progress_file, save_version, set_current
from assets.store.npy import iter_npy_rows
from assets.store.resource import LenslessHome
from models.device import resolve_device
from models.embed import iter_embeddings
from models.encoder import ImageEncoder, encoder_config
from models.progress import progress_line
from models.train_encoder import EncoderTrainConfig, train_encoder


class EncoderRunConfig(dg.Config):
    """Run knobs for encoder training; model and optimiser defaults live in models/."""

    architecture: str = "small"  # a name from models.encoder.encoder_names()
    dim: int = 0  # 0: the architecture's own output dimension (128 for "small")
    epochs: int = EncoderTrainConfig.epochs
    max_images: int = 20_000  # sample cap for training (deterministic sample)
    # co-engagement term: weight, share of each batch, and the trailing dims it shapes alone
    # (0 = the whole embedding, shared with the label term; -1 = a quarter); see models.train_encoder
    pair_weight: float = EncoderTrainConfig.pair_weight
    pair_fraction: float = EncoderTrainConfig.pair_fraction
    pair_dims: int = EncoderTrainConfig.pair_dims
    max_pairs: int = 5000  # the strongest train-split co-engagement pairs the pair term uses (0 = all)
    seed: int = 0
    device: str = EncoderTrainConfig.device  # "auto": the GPU when torch sees one, else "cpu"


@dg.asset(
    group_name="embeddings",
    kinds={"pytorch", "safetensors"},
    deps=[raw_images, engagement_events],
    pool=TRAIN_POOL,
    op_tags=GPU_STEP_TAGS,
    code_version="image_encoder-v3",
)
def image_encoder(context: dg.AssetExecutionContext, config: EncoderRunConfig,
                  lensless_home: LenslessHome) -> dg.MaterializeResult:
    """The in-house image encoder, trained contrastively on every ingested batch.

    InfoNCE on two augmented views, plus a multi-positive term from labels and from train-split
    co-engagement. It never trains on a `test`-split image; those held-out images measure
    kNN@10 label precision against a raw-pixel PCA baseline and the same encoder at random
    init. Saved as safetensors + JSON config under `models/image_encoder/<version>/`; the
    version is this asset's data version.
    """
    home = lensless_home.get()
    frame = catalog(home)
    if frame.height < 20:
        raise ValueError(f"need at least 20 ingested images to train the encoder, have {frame.height}")
    ids = frame["image_id"].to_list()
    train_rows, held = training_rows(ids, config.max_images, config.seed)
    pixels = load_pixels(home, frame)
    labels = frame["label_code"].to_numpy()
    pairs = train_pairs_rows(home, ids, train_rows, config.max_pairs, config.seed)
    context.log.info(f"training on {len(train_rows)} images ({held.sum()} held out), {len(pairs)} co-engagement pairs")

    import torch

    torch.manual_seed(config.seed)
    overrides = {"dim": config.dim} if config.dim else {}
    model = ImageEncoder(encoder_config(config.architecture, **overrides))
    random_init = ImageEncoder(model.config)
    random_init.load_state_dict(model.state_dict())
    cfg = EncoderTrainConfig(epochs=config.epochs, seed=config.seed, pair_weight=config.pair_weight,
                             pair_fraction=config.pair_fraction, pair_dims=config.pair_dims, device=config.device)
    code_version = context.assets_def.code_versions_by_key[context.asset_key]
    progress = progress_file(home, "image_encoder", code_version)  # a run killed in training is resumed, not restarted
    metrics = train_encoder(model, pixels[train_rows], labels[train_rows], pairs, cfg,
                            progress=lambda p: context.log.info(f"encoder {progress_line(p)}"), progress_file=progress)
    random_init.to(next(model.parameters()).device)  # both embed the catalog on the same device
    quality = evaluate_encoder(home, model, random_init, pixels, labels, held, ids)
    version = save_version(home, "image_encoder", lambda d: model.save(d, extra={"metrics": quality}))
    set_current(home, "image_encoder", version, reason=f"run {context.run_id}")
    progress.clear()
    context.log.info(f"encoder {version}: {quality}")
    table = [{"embedding": k.removesuffix("_knn_precision_at_10"), "kNN@10 label precision": v}
             for k, v in quality.items() if k.endswith("_knn_precision_at_10")]
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "version": version,
            **settings_metadata(config),
            "dim": model.config.dim,
            "parameters": model.num_params(),
            "train_images": len(train_rows),
            "catalog_images": frame.height,
            "trained_batches": ",".join(sorted(frame["batch"].unique().to_list())),
            "train_seconds": round(metrics["seconds"], 1),
            "resumed_at_step": metrics["resumed_at_step"] if metrics["resumed_at_step"] is not None else "no (a fresh run)",
            **{k: dg.MetadataValue.float(float(v)) for k, v in quality.items() if v is not None},
            "quality": dg.MetadataValue.md(md_table(table)),
            "loss_curve": dg.MetadataValue.md(md_image(line_plot({"loss": metrics["loss"]}, "encoder training loss"))),
        },
    )


class EmbedRunConfig(dg.Config):
    """Streaming batch size (bounds peak memory; does not change results) and device."""

    batch_size: int = 256
    device: str = EncoderTrainConfig.device  # "auto": the GPU when torch sees one, else "cpu"; or "cuda:N"


@dg.asset(
    partitions_def=image_batches,
    group_name="embeddings",
    kinds={"pytorch", "parquet"},
    deps=[raw_images, image_encoder],
    code_version="image_embeddings-v1",
)
def image_embeddings(context: dg.AssetExecutionContext, config: EmbedRunConfig,
                     lensless_home: LenslessHome) -> dg.MaterializeResult:
    """Proprietary embeddings of one batch with the current encoder.

    Writes the batch's partition of `image_embeddings` (image_id, embedding: float32[d],
    encoder_version), streaming the batch's pixels in bounded mini-batches.
    """
    home, batch = lensless_home.get(), context.partition_key
    encoder_dir = current_dir(home, "image_encoder")
    model = ImageEncoder.from_checkpoint(encoder_dir, map_location=resolve_device(config.device))
    manifest = read_table(home, "raw_images", [batch])
    started = time.perf_counter()
    chunks = iter_npy_rows(pixels_path(home, batch), config.batch_size)  # bounded memory
    blocks = list(iter_embeddings(model, chunks, batch_size=config.batch_size))
    emb = np.concatenate(blocks) if blocks else np.zeros((0, model.config.dim), np.float32)
    d = model.config.dim
    frame = pl.DataFrame({
        "image_id": manifest.sort("row")["image_id"],
        "embedding": pl.Series(emb, dtype=pl.Array(pl.Float32, d)),
        "encoder_version": encoder_dir.name,
    })
    write_table(home, "image_embeddings", frame, batch)
    seconds = time.perf_counter() - started
    return dg.MaterializeResult(metadata={
        "rows": frame.height, "dim": d, "encoder_version": encoder_dir.name,
        "images_per_second": round(frame.height / seconds, 1) if seconds > 0 else None,
        "dagster/row_count": frame.height,
    })


@dg.asset_check(asset=image_embeddings, blocking=True,
                description="Every vector is finite, unit-norm and of the encoder's dimension; one row per manifest row.")
def embeddings_valid(context: dg.AssetCheckExecutionContext, lensless_home: LenslessHome) -> dg.AssetCheckResult:
    """Finite, unit-norm, right dimension, exactly one row per ingested image of the batch."""
    home, batch = lensless_home.get(), context.partition_key
    frame = read_table(home, "image_embeddings", [batch])
    manifest = read_table(home, "raw_images", [batch])
    dim = ImageEncoder.from_checkpoint(current_dir(home, "image_encoder")).config.dim
    emb = frame["embedding"].to_numpy() if frame.height else np.zeros((0, dim), np.float32)
    norms = np.linalg.norm(emb, axis=1) if len(emb) else np.ones(0)
    result = {
        "rows_match_manifest": frame.height == manifest.height and set(frame["image_id"]) == set(manifest["image_id"]),
        "unique_ids": frame["image_id"].n_unique() == frame.height,
        "right_dimension": emb.shape[1] == dim,
        "finite": bool(np.isfinite(emb).all()),
        "unit_norm": bool(np.allclose(norms, 1.0, atol=1e-3)),
    }
    return dg.AssetCheckResult(passed=all(result.values()), metadata={k: bool(v) for k, v in result.items()})
