"""Stage 3: the FAISS index over the embeddings, tuned to a recall target (group `retrieval`)."""
