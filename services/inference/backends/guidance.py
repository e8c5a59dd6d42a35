"""JSON-constrained decoding with llguidance, shared by the transformers and MLX backends.

llguidance: a dependency-free wheel with torch, numpy and MLX bitmask APIs, covering
more of JSON Schema than llama.cpp's converter. (xgrammar pulls in triton, 1 GB, on a
CPU install; outlines is heavier still.) Output is compact JSON, and objects that list
their properties are closed, as OpenAI's strict mode treats them.
"""

from __future__ import annotations

import json
from typing import Any

from services.common.errors import InvalidArgument
from services.inference.backends.json_schema_grammar import close_objects
from services.inference.domain import ResponseFormat


def grammar(schema: dict[str, Any]) -> str:
    import llguidance

    # Compact JSON: with free whitespace a sampled model can pad with newlines until max_tokens.
    text = json.dumps(close_objects(schema))
    compiled: str = llguidance.LLMatcher.grammar_from_json_schema(text, defaults={"whitespace_flexible": False})
    return compiled


def check_schema(schema: dict[str, Any]) -> None:
    """InvalidArgument naming what llguidance reports it cannot enforce."""
    import llguidance

    if error := llguidance.LLMatcher.validate_grammar(grammar(schema)):
        raise InvalidArgument(f"Unsupported JSON schema feature: {error}", param="response_format")


def matcher(tokenizer: Any, response_format: ResponseFormat) -> Any:
    """A fresh matcher for one generation; `tokenizer` is an llguidance LLTokenizer."""
    import llguidance

    return llguidance.LLMatcher(tokenizer, grammar(response_format.json_schema()))
