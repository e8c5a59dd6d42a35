"""Embeddings service: sentence-transformers embeddings and reranking behind a gRPC API."""
