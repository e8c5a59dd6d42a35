"""Managed model servers: engine processes (llama-server, any OpenAI-compatible command) and
containers that the mesh starts, health-checks, proxies to, restarts and stops."""
