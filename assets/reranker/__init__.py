"""Stage 4: training groups and the gutted and full-VLM rerankers (group `reranker`)."""
