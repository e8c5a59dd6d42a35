"""Training data from a seed file: examples, their variants, and templates filled from rows.

A seed file is JSON Lines. Each line is one of:

    {"instruction": "...", "input": "...", "output": "...", "variants": ["other phrasing", ...]}
    {"messages": [...], "variants": ["other phrasing of the last user turn", ...]}
    {"templates": [{"instruction": "Spell {word}.", "output": "{spelled}"}, ...],
     "rows": [{"word": "cat", "spelled": "c-a-t"}, ...]}

Variants add examples with the same answer; templates give one example per template
and row. Generation is deterministic, so the same seed file makes the same dataset
and, with the same hyperparameters, the same adapter id.
"""

from __future__ import annotations

import json
import random
import string
from typing import Any

from services.common.errors import InvalidArgument
from services.trainer.domain import check_examples, examples_from_jsonl

Example = list[dict[str, str]]
MAX_GENERATED = 100_000


def generate(seed_text: str) -> list[Example]:
    records: list[dict[str, Any]] = []
    for number, line in enumerate(seed_text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise InvalidArgument(f"Seed line {number} is not JSON: {error}", param="seed") from error
        if not isinstance(record, dict):
            raise InvalidArgument(f"Seed line {number} is not a JSON object.", param="seed")
        records.extend(_expand(record, number))
        if len(records) > MAX_GENERATED:
            raise InvalidArgument(f"The seed file generates more than {MAX_GENERATED} examples.", param="seed")
    examples = examples_from_jsonl("\n".join(json.dumps(r) for r in records), "seed")
    return check_examples(_unique(examples), "seed")


def split(examples: list[Example], eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Shuffled (deterministically) into training and held-out examples; at least one of each."""
    if len(examples) < 2:
        raise InvalidArgument("A build needs at least two examples: one to train on, one to hold out.", param="seed")
    if not 0 < eval_fraction < 1:
        raise InvalidArgument("'eval_fraction' must be between 0 and 1.", param="eval_fraction")
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    held_out = min(max(1, round(len(shuffled) * eval_fraction)), len(shuffled) - 1)
    return shuffled[held_out:], shuffled[:held_out]


def _expand(record: dict[str, Any], number: int) -> list[dict[str, Any]]:
    if "templates" in record:
        templates, rows = record.get("templates"), record.get("rows")
        if not isinstance(templates, list) or not isinstance(rows, list) or not rows:
            raise InvalidArgument(f"Seed line {number}: 'templates' and 'rows' must be non-empty lists.", param="seed")
        return [_filled(t, row, number) for t in templates for row in rows]
    variants = record.pop("variants", [])
    if not isinstance(variants, list) or not all(isinstance(v, str) for v in variants):
        raise InvalidArgument(f"Seed line {number}: 'variants' must be a list of strings.", param="seed")
    expanded = [record]
    for variant in variants:
        if "messages" in record:
            messages = [dict(m) for m in record["messages"]]
            users = [m for m in messages[:-1] if m.get("role") == "user"]
            if not users:
                raise InvalidArgument(f"Seed line {number}: variants need a user turn.", param="seed")
            users[-1]["content"] = variant
            expanded.append({"messages": messages})
        else:
            expanded.append({**record, "instruction": variant})
    return expanded


def _filled(template: Any, row: Any, number: int) -> dict[str, Any]:
    if not isinstance(template, dict) or not isinstance(row, dict):
        raise InvalidArgument(f"Seed line {number}: templates and rows are JSON objects.", param="seed")
    values = {str(k): str(v) for k, v in row.items()}
    try:
        return {key: _format(str(text), values) for key, text in template.items()}
    except KeyError as error:
        raise InvalidArgument(f"Seed line {number}: a row has no value for {error}.", param="seed") from error


def _format(text: str, values: dict[str, str]) -> str:
    """`{slot}` filled from `values`; only plain names (no attribute or index lookups)."""
    for _, field, spec, conversion in string.Formatter().parse(text):
        if field is not None and (not field.isidentifier() or spec or conversion):
            raise InvalidArgument(f"'{{{field}}}' is not a plain slot name.", param="seed")
    return text.format_map(values)


def _unique(examples: list[Example]) -> list[Example]:
    seen: set[str] = set()
    unique = []
    for example in examples:
        key = json.dumps(example, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(example)
    return unique
