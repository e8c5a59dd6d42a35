"""JSON-constrained decoding with llguidance, shared by the transformers and MLX backends.

llguidance: a dependency-free wheel with torch, numpy and MLX bitmask APIs, covering
more of JSON Schema than llama.cpp's converter. (xgrammar pulls in triton, 1 GB, on a
CPU install; outlines is heavier still.) Output is compact JSON, and objects that list
their properties are closed, as OpenAI's strict mode treats them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from services.common.errors import InvalidArgument
from services.inference.api import OutputFrame, ResponseFormat
from services.inference.backends.json_schema_grammar import close_objects


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


def framed_grammar(schema: dict[str, Any], frame: OutputFrame) -> str:
    """A Lark grammar: `open <json> close` items joined by `separator` (up to `max_items`),
    or, with `allow_text`, plain text that does not start like `open`."""
    import llguidance

    constrained = {**close_objects(schema), "x-guidance": {"whitespace_flexible": False}}
    literal = json.dumps
    item = f"{literal(frame.open)} framed_json {literal(frame.close)}"
    items = f"item ({literal(frame.separator)} item){{0,{frame.max_items - 1}}}" if frame.max_items > 1 else "item"
    rules = [f"item: {item}", f"items: {items}", f"framed_json: %json {json.dumps(constrained)}"]
    if frame.allow_text:
        first = (frame.open or "{")[0]  # prose must not start like a call ("{" for a bare object)
        rules += ["start: items | TEXT", f"TEXT: /[^{re.escape(first)}](.|\\n)*/"]
    else:
        rules.append("start: items")
    compiled: str = llguidance.LLMatcher.grammar_from_lark("\n".join(rules))
    return compiled


def matcher(tokenizer: Any, response_format: ResponseFormat) -> Any:
    """A fresh matcher for one generation; `tokenizer` is an llguidance LLTokenizer."""
    import llguidance

    schema = response_format.json_schema()
    frame = response_format.frame
    return llguidance.LLMatcher(tokenizer, framed_grammar(schema, frame) if frame else grammar(schema))
