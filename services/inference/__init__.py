"""Inference service: owns the models and runs generation behind a gRPC API."""
