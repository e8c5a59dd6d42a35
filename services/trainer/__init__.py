"""LoRA adapter training (transformers + PEFT in a subprocess), with artifacts in S3 or on disk."""
