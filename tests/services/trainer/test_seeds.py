"""Seed files: examples, variants and templates become a deterministic dataset and split."""

from __future__ import annotations

import json

import pytest

from services.common.errors import InvalidArgument
from services.trainer.seeds import generate, split


def jsonl(*records: object) -> str:
    return "\n".join(json.dumps(record) for record in records)


def test_variants_and_templates_expand() -> None:
    examples = generate(
        jsonl(
            {"instruction": "Capital of France?", "output": "Paris.", "variants": ["France's capital?"]},
            {
                "templates": [{"instruction": "Spell {w}.", "output": "{s}"}],
                "rows": [{"w": "cat", "s": "c-a-t"}, {"w": "dog", "s": "d-o-g"}],
            },
            {"instruction": "Capital of France?", "output": "Paris."},  # a duplicate: kept once
        )
    )
    prompts = [example[0]["content"] for example in examples]
    assert prompts == ["Capital of France?", "France's capital?", "Spell cat.", "Spell dog."]
    assert examples[3][1] == {"role": "assistant", "content": "d-o-g"}


def test_split_is_deterministic_and_holds_out_at_least_one() -> None:
    examples = generate(jsonl(*({"instruction": f"q{i}", "output": f"a{i}"} for i in range(10))))
    train, held_out = split(examples, 0.2, seed=1)
    assert (len(train), len(held_out)) == (8, 2) and split(examples, 0.2, seed=1) == (train, held_out)
    assert len(split(examples[:3], 0.01, seed=0)[1]) == 1


@pytest.mark.parametrize(
    "seed",
    [
        jsonl({"templates": [{"instruction": "{missing}", "output": "x"}], "rows": [{"w": "a"}]}),
        jsonl({"templates": [{"instruction": "{w.__class__}", "output": "x"}], "rows": [{"w": "a"}]}),
        jsonl({"instruction": "q", "output": "a", "variants": "not a list"}),
        "{broken",
    ],
)
def test_bad_seed_files(seed: str) -> None:
    with pytest.raises(InvalidArgument):
        generate(seed)
