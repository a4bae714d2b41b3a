"""Stage 5: candidates, reranking, the evaluation report and the champion (group `evaluation`)."""
