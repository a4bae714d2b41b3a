"""Stage 2: the in-house image encoder and the embeddings of every batch (group `embeddings`)."""
