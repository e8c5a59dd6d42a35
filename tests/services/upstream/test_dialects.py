"""The wire formats, on recorded shapes: pure functions, no I/O."""

import pytest

from services.common.errors import InvalidArgument
from services.inference.api import (
    ChatMessage,
    FinishReason,
    Image,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    SamplingParams,
    Usage,
)
from services.upstream.config import AuthType, Provider, RequestFormat, RestConfig
from services.upstream.dialects import StreamState, UpstreamRequest, build_call, parse_answer, parse_stream_event


def config(provider: Provider, request_format: RequestFormat = RequestFormat.OPENAI) -> RestConfig:
    return RestConfig(
        url="http://upstream",
        remote_model="remote",
        provider=provider,
        request_format=request_format,
        auth_type=AuthType.NONE,
        auth_token=None,
        auth_header="Authorization",
        timeout=5,
    )


CHAT = UpstreamRequest(
    sampling=SamplingParams(temperature=0.0, max_tokens=5, stop=("END",)),
    messages=(
        ChatMessage(Role.SYSTEM, "be brief"),
        ChatMessage(Role.USER, "look", images=(Image(data=b"\x89PNG", mime_type="image/png"),)),
    ),
)


def test_openai_chat_body() -> None:
    call = build_call(config(Provider.OPENAI), CHAT, stream=True)
    assert call.path == "/v1/chat/completions" and call.stream == "sse"
    assert call.body["temperature"] == 0.0 and call.body["stop"] == ["END"] and call.body["max_tokens"] == 5
    assert call.body["stream_options"] == {"include_usage": True}
    image = call.body["messages"][1]["content"][1]
    assert image["image_url"]["url"].startswith("data:image/png;base64,")
    assert "top_k" not in call.body  # only sent when asked for


def test_anthropic_body_separates_system_and_requires_max_tokens() -> None:
    call = build_call(config(Provider.ANTHROPIC), CHAT, stream=False)
    assert call.path == "/v1/messages"
    assert call.body["system"] == "be brief"
    assert call.body["stop_sequences"] == ["END"] and call.body["max_tokens"] == 5
    blocks = call.body["messages"][0]["content"]
    assert blocks[1]["source"] == {"type": "base64", "media_type": "image/png", "data": "iVBORw=="}


def test_anthropic_rejects_raw_prompts() -> None:
    with pytest.raises(InvalidArgument):
        build_call(config(Provider.ANTHROPIC), UpstreamRequest(SamplingParams(), prompt="x"), stream=False)


def test_ollama_body_has_options_and_inline_images() -> None:
    call = build_call(config(Provider.OLLAMA), CHAT, stream=True)
    assert call.path == "/api/chat" and call.stream == "ndjson"
    assert call.body["options"] == {"temperature": 0.0, "num_predict": 5, "stop": ["END"]}
    assert call.body["messages"][1]["images"] == ["iVBORw=="]


def test_ollama_cannot_fetch_image_urls() -> None:
    request = UpstreamRequest(
        SamplingParams(),
        messages=(ChatMessage(Role.USER, "x", images=(Image(url="https://example.com/cat.png"),)),),
    )
    with pytest.raises(InvalidArgument, match="inline"):
        build_call(config(Provider.OLLAMA), request, stream=False)


def test_chatml_request_format_sends_a_rendered_prompt() -> None:
    call = build_call(config(Provider.OPENAI, RequestFormat.CHATML), CHAT, stream=False)
    assert call.path == "/v1/completions"
    assert call.body["prompt"].startswith("<|im_start|>system\nbe brief<|im_end|>")
    assert "<|im_end|>" in call.body["stop"]


@pytest.mark.parametrize(
    ("provider", "payload", "expected"),
    [
        (
            Provider.OPENAI,
            {
                "choices": [{"message": {"content": "hi"}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
            },
            ("hi", FinishReason.LENGTH, Usage(3, 1)),
        ),
        (
            Provider.ANTHROPIC,
            {
                "content": [{"type": "text", "text": "hi"}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 3, "output_tokens": 1},
            },
            ("hi", FinishReason.STOP, Usage(3, 1)),
        ),
        (
            Provider.OLLAMA,
            {
                "message": {"content": "hi"},
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": 3,
                "eval_count": 1,
            },
            ("hi", FinishReason.STOP, Usage(3, 1)),
        ),
        (Provider.GENERIC, {"generated_text": "hi"}, ("hi", FinishReason.STOP, Usage())),
    ],
)
def test_answers(provider, payload, expected) -> None:
    assert parse_answer(provider, payload) == expected


def test_openai_stream_events() -> None:
    state = StreamState()
    assert parse_stream_event(Provider.OPENAI, '{"choices":[{"delta":{"content":"a"}}]}', state) == "a"
    parse_stream_event(Provider.OPENAI, '{"choices":[{"delta":{},"finish_reason":"length"}]}', state)
    parse_stream_event(Provider.OPENAI, '{"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":1}}', state)
    parse_stream_event(Provider.OPENAI, "[DONE]", state)
    assert state.done and state.last_chunk().finish_reason is FinishReason.LENGTH
    assert state.last_chunk().usage == Usage(2, 1)


def test_response_format_passes_through_or_is_refused() -> None:
    schema = '{"type": "object", "properties": {"a": {"type": "integer"}}}'
    request = UpstreamRequest(
        SamplingParams(),
        messages=CHAT.messages,
        response_format=ResponseFormat(ResponseFormatKind.JSON_SCHEMA, schema, "thing"),
    )
    openai_body = build_call(config(Provider.OPENAI), request, stream=False).body
    assert openai_body["response_format"]["json_schema"]["name"] == "thing"
    assert openai_body["response_format"]["json_schema"]["schema"]["properties"]["a"] == {"type": "integer"}
    assert build_call(config(Provider.OLLAMA), request, stream=False).body["format"]["type"] == "object"
    for provider in (Provider.ANTHROPIC, Provider.GENERIC):
        with pytest.raises(InvalidArgument, match="no JSON output mode"):
            build_call(config(provider), request, stream=False)
