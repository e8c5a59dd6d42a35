"""/v1/completions: the OpenAI request -> inference mapping."""

import pytest

from services.common.errors import InvalidArgument
from services.gateway.protocol.completions import CompletionRequestIn


def test_completion_prompt_list_orders_choices_prompt_major() -> None:
    request = CompletionRequestIn.model_validate({"model": "m", "prompt": ["a", "b"], "n": 2})
    assert [r.prompt for r in request.to_domain(max_choices=8)] == ["a", "a", "b", "b"]


def test_completion_token_prompts_are_rejected_clearly() -> None:
    with pytest.raises(InvalidArgument, match="token ids"):
        CompletionRequestIn.model_validate({"model": "m", "prompt": [1, 2, 3]}).to_domain(max_choices=8)
