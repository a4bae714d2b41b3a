"""FAISS in the faiss-contrib style: build, tune, search, shards, io, metrics. No Dagster here."""
