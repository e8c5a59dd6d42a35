"""Usage across choices and prompts."""

from services.gateway.protocol.common import usage_body
from services.inference.api import Usage


def test_usage_counts_each_prompt_once() -> None:
    usages = [Usage(10, 3, 8), Usage(10, 4, 8), Usage(20, 5), Usage(20, 6)]
    assert usage_body(usages, choices_per_prompt=2).model_dump() == {
        "prompt_tokens": 30,
        "completion_tokens": 18,
        "total_tokens": 48,
        "prompt_tokens_details": {"cached_tokens": 8},
    }
