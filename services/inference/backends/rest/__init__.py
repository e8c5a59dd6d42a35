"""REST backend: inference on remote APIs (OpenAI, Anthropic, Ollama, LM Studio, generic)."""
