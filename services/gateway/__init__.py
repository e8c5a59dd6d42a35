"""Gateway: OpenAI-compatible HTTP in front of the mesh's gRPC services."""
