"""One router module per OpenAI endpoint family."""
