"""The published specifications the gateway's answers are validated against (copied in by
`extract.py`): OpenAI's OpenAPI document and the Open Responses schemas, and Anthropic's
Messages shapes written from its API reference (`anthropic.py`)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

HERE = Path(__file__).parent


class Spec:
    """One document's component schemas, each usable as a validator by name."""

    def __init__(self, path: Path) -> None:
        self.name = path.name
        self.document = json.loads(path.read_text())

    @cache  # noqa: B019 (two instances, alive for the session)
    def validator(self, name: str) -> jsonschema.Draft202012Validator:
        schema = {"$ref": f"#/components/schemas/{name}", "components": self.document["components"]}
        return jsonschema.Draft202012Validator(schema)

    def errors(self, name: str, instance: Any) -> list[str]:
        """Every way `instance` fails schema `name`, each with where it fails."""
        return [_describe(name, error) for error in self.validator(name).iter_errors(instance)]

    def check(self, name: str, instance: Any) -> None:
        if errors := self.errors(name, instance):
            raise AssertionError("\n".join(errors))


def _describe(name: str, error: jsonschema.ValidationError) -> str:
    """Where and why; for a failed anyOf/oneOf, why its closest branch failed."""
    deepest = error
    while deepest.context:
        deepest = jsonschema.exceptions.best_match(deepest.context)
    where = "/".join(map(str, deepest.absolute_path)) or "(root)"
    return f"{name} at {where}: {deepest.message[:300]}"


OPENAI = Spec(HERE / "openai.json")
OPEN_RESPONSES = Spec(HERE / "openresponses.json")


def check_responses_event(event: dict[str, Any]) -> None:
    """A Responses stream event against the schema of its type, in both specifications."""
    for spec, union in (
        (OPEN_RESPONSES, OPEN_RESPONSES.document["x-streaming-event-union"]),
        (OPENAI, [ref["$ref"].rsplit("/", 1)[-1] for ref in _schemas(OPENAI)["ResponseStreamEvent"]["anyOf"]]),
    ):
        by_type = _by_type(spec, tuple(union))
        assert event["type"] in by_type, f"event type {event['type']!r} is not in {spec.name}"
        spec.check(by_type[event["type"]], event)


def _schemas(spec: Spec) -> dict[str, Any]:
    return spec.document["components"]["schemas"]


@cache
def _by_type(spec: Spec, union: tuple[str, ...]) -> dict[str, str]:
    return {_schemas(spec)[name]["properties"]["type"]["enum"][0]: name for name in union}
