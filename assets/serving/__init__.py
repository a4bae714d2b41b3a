"""Recommendations from the champion reranker (the `lensless recommend` command; no assets)."""
