"""Jobs: named asset selections people launch from the UI or the command line."""


import dagster as dg

from assets.ingestion import image_batches

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.groups("ingestion"),
    partitions_def=image_batches,
    description="Ingest one image batch and refresh the engagement log.",
)
