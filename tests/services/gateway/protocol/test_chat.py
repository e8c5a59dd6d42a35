"""/v1/chat/completions: the OpenAI request -> inference mapping."""

import pytest
from pydantic import ValidationError

from services.common.errors import InvalidArgument
from services.gateway.protocol.chat import ChatCompletionRequest
from services.inference.api import Role


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_chat_maps_roles_content_parts_and_sampling() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "live",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ],
            "temperature": 0,
            "stop": "END",
            "max_completion_tokens": 7,
            "top_k": 5,
            "unknown_extra_field": True,
        }
    )
    (domain,) = request.to_domain(max_choices=8)
    assert domain.model == "live"
    assert [m.role for m in domain.messages] == [Role.SYSTEM, Role.USER]
    assert domain.messages[1].content == "ab"
    assert domain.sampling.temperature == 0.0
    assert domain.sampling.stop == ("END",)
    assert domain.sampling.max_tokens == 7
    assert domain.sampling.top_k == 5
    assert domain.sampling.top_p is None


def test_image_parts_become_images() -> None:
    request = chat(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw=="}},
                ],
            }
        ]
    )
    (domain,) = request.to_domain(max_choices=8)
    assert domain.messages[0].content == "what is this?"
    assert domain.messages[0].images[0].url == "data:image/png;base64,iVBORw=="


def test_n_makes_one_request_per_choice_with_distinct_ids() -> None:
    requests = chat(n=3).to_domain(max_choices=8)
    assert len(requests) == 3
    assert len({r.request_id for r in requests}) == 3


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 9}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logit_bias": {"1": 1.0}}, "logit_bias"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "tool_choice",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}]},
            "messages.0.content",
        ),
    ],
)
def test_unsupported_features_are_rejected_by_name(fields, param) -> None:
    with pytest.raises(InvalidArgument) as raised:
        for request in chat(**fields).to_domain(max_choices=8):
            request.validate()
    assert raised.value.param == param


@pytest.mark.parametrize("fields", [{"temperature": 2.1}, {"max_tokens": 0}, {"top_p": 0}, {"messages": []}, {"n": 0}])
def test_out_of_range_values_fail_validation(fields) -> None:
    with pytest.raises(ValidationError):
        chat(**fields)
