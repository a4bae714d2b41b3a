"""Stage 1: image files and engagement logs into the lake (group `ingestion`)."""
