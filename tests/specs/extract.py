"""Copies the parts of the published specifications that the spec tests validate against into
this folder, so that a fresh clone needs nothing outside it:

    .venv/bin/python -m tests.specs.extract ../shared/specs

From OpenAI's OpenAPI document it keeps the response schemas of the operations the gateway
serves and everything they reference, without prose (descriptions, examples), and rewrites
OpenAPI 3.0's `nullable` into JSON Schema. The Open Responses schemas are copied whole."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent

# What the gateway answers: unary bodies, stream chunks and events, errors.
OPENAI_ROOTS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "CreateEmbeddingResponse",
    "ListModelsResponse",
    "Model",
    "DeleteModelResponse",
    "Response",
    "ResponseStreamEvent",
    "ResponseItemList",
    "OpenAIFile",
    "ListFilesResponse",
    "DeleteFileResponse",
    "Batch",
    "ListBatchesResponse",
    "ErrorResponse",
)
NULL_WHEN_UNSET = ("Batch", "OpenAIFile")
PROSE = {"description", "example", "examples", "title", "x-oaiMeta", "x-oaiTypeLabel", "x-oaiExpandable"}


def _references(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].rsplit("/", 1)[-1]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_references(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_references(value) for value in node))
    return set()


def _clean(node: Any) -> Any:
    """Prose dropped (a property that happens to be called `description` is a schema, kept),
    and `nullable: true` written as the null it allows."""
    if isinstance(node, list):
        return [_clean(value) for value in node]
    if not isinstance(node, dict):
        return node
    cleaned = {key: _clean(value) for key, value in node.items() if not (key in PROSE and not isinstance(value, dict))}
    if cleaned.pop("nullable", False):
        kind = cleaned.get("type")
        if isinstance(kind, str) and "enum" not in cleaned:
            cleaned["type"] = [kind, "null"]
        else:
            cleaned = {"anyOf": [cleaned, {"type": "null"}]}
    return cleaned


def extract_openai(document: dict[str, Any]) -> dict[str, Any]:
    schemas = document["components"]["schemas"]
    kept: set[str] = set()
    pending = list(OPENAI_ROOTS)
    while pending:
        name = pending.pop()
        if name not in kept:
            kept.add(name)
            pending.extend(_references(schemas[name]) - kept)
    kept_schemas = {name: _clean(schemas[name]) for name in sorted(kept)}
    # The document says a streamed completion shares the unary shape, but the API (and every
    # client) sends `finish_reason: null` until the last chunk: the stream gets its own schema.
    stream = json.loads(json.dumps(kept_schemas["CreateCompletionResponse"]))
    finish = stream["properties"]["choices"]["items"]["properties"]["finish_reason"]
    finish["type"], finish["enum"] = ["string", "null"], [*finish["enum"], None]
    stream["properties"]["usage"] = {"anyOf": [stream["properties"]["usage"], {"type": "null"}]}
    kept_schemas["CreateCompletionStreamResponse"] = stream
    # Echoed prompts: the first token has no log-probability, and the API sends null for it.
    logprobs = kept_schemas["CreateCompletionResponse"]["properties"]["choices"]["items"]["properties"]["logprobs"]
    for schema in (logprobs, stream["properties"]["choices"]["items"]["properties"]["logprobs"]):
        entries = schema["anyOf"][0]["properties"]
        entries["token_logprobs"]["items"] = {"type": ["number", "null"]}
        entries["top_logprobs"]["items"] = {"anyOf": [entries["top_logprobs"]["items"], {"type": "null"}]}
    # encoding_format "base64": the API sends each embedding as a base64 string.
    embedding = kept_schemas["Embedding"]["properties"]["embedding"]
    kept_schemas["Embedding"]["properties"]["embedding"] = {"anyOf": [embedding, {"type": "string"}]}
    # A response in progress: the API sends `usage: null` (and Open Responses requires the key).
    response = kept_schemas["Response"]["allOf"][2]["properties"]
    response["usage"] = {"anyOf": [response["usage"], {"type": "null"}]}
    # The API sends null for what has not happened yet (a batch's `failed_at`, a file's
    # `expires_at`), where the document only lists the field as optional.
    for name in NULL_WHEN_UNSET:
        schema = kept_schemas[name]
        for field, value in schema["properties"].items():
            if field not in schema["required"]:
                schema["properties"][field] = {"anyOf": [value, {"type": "null"}]}
    return {"components": {"schemas": kept_schemas}}


def main(shared: Path) -> None:
    openai_document = json.loads((shared / "openai-openapi.json").read_text())
    (HERE / "openai.json").write_text(json.dumps(extract_openai(openai_document), indent=1, sort_keys=True) + "\n")
    responses = json.loads((shared / "openresponses-responses.json").read_text())
    # Deliberate deviation (README, "Deviations"): the published schema lets a json_schema
    # format's `schema` only be null; the gateway echoes the schema, as OpenAI's API does.
    json_schema_format = responses["components"]["schemas"]["JsonSchemaResponseFormat"]["properties"]
    json_schema_format["schema"] = {"anyOf": [{"type": "object"}, {"type": "null"}]}
    (HERE / "openresponses.json").write_text(json.dumps(responses, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/specs"))
