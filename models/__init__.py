"""Trained models: encoder, gutted Qwen3-VL reranker, full-VLM baseline, cost. No Dagster here."""
