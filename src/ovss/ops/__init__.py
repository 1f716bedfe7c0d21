"""Operations shared by every method: dense CLIP, text embeddings, windows, post-processing."""
