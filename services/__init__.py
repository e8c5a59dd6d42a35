"""LLM Mesh services. Each service lives in its own package; shared runtime is in `services.common`."""
