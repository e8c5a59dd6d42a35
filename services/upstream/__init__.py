"""The HTTP dialects of remote LLM servers (OpenAI, Anthropic, Ollama, LM Studio, generic):
shared by inference's REST backend and the fleet's HTTP nodes, so that one place knows each wire format."""
