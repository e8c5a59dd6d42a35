"""The OpenAI -> inference mapping."""

import pytest
from pydantic import ValidationError

from services.common.errors import InvalidArgument
from services.gateway.schemas import ChatCompletionRequest, CompletionRequestIn, usage_body
from services.inference.domain import Role, Usage


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
        ({"logprobs": True}, "logprobs"),
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


def test_completion_prompt_list_orders_choices_prompt_major() -> None:
    request = CompletionRequestIn.model_validate({"model": "m", "prompt": ["a", "b"], "n": 2})
    assert [r.prompt for r in request.to_domain(max_choices=8)] == ["a", "a", "b", "b"]


def test_completion_token_prompts_are_rejected_clearly() -> None:
    with pytest.raises(InvalidArgument, match="token ids"):
        CompletionRequestIn.model_validate({"model": "m", "prompt": [1, 2, 3]}).to_domain(max_choices=8)


def test_usage_counts_each_prompt_once() -> None:
    usages = [Usage(10, 3, 8), Usage(10, 4, 8), Usage(20, 5), Usage(20, 6)]
    assert usage_body(usages, choices_per_prompt=2) == {
        "prompt_tokens": 30,
        "completion_tokens": 18,
        "total_tokens": 48,
        "prompt_tokens_details": {"cached_tokens": 8},
    }


def test_hyperparameters_have_one_declaration_that_the_proto_and_http_follow() -> None:
    from llmmesh.trainer.v1 import trainer_service_pb2 as trainer_pb
    from services.gateway.schemas import HyperparametersIn
    from services.trainer.client import Hyperparameters

    declared = tuple(Hyperparameters.model_fields)
    assert tuple(f.name for f in trainer_pb.Hyperparameters.DESCRIPTOR.fields) == declared
    assert tuple(HyperparametersIn.model_fields) == declared
    for name, info in Hyperparameters.model_fields.items():  # the same bounds, only optional
        assert HyperparametersIn.model_fields[name].metadata == info.metadata, name
    assert HyperparametersIn().model_dump(exclude_none=True) == {}
