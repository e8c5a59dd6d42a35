"""Wire formats of remote APIs: how a request is serialized (request format) and where it goes and how
the answer is parsed (provider).

Every function here is pure: no I/O, so that each format is unit-tested on recorded shapes.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from services.common.chat_templates import ChatTemplate
from services.common.errors import InvalidArgument
from services.inference.api import (
    ChatMessage,
    Chunk,
    FinishReason,
    Image,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    SamplingParams,
    Usage,
)
from services.upstream.config import Provider, RequestFormat, RestConfig


@dataclass(frozen=True)
class UpstreamRequest:
    """What a remote API is asked: chat `messages` or a raw `prompt`, with resolved sampling."""

    sampling: SamplingParams
    messages: tuple[ChatMessage, ...] = ()
    prompt: str | None = None
    response_format: ResponseFormat = field(default_factory=ResponseFormat)

    @property
    def is_chat(self) -> bool:
        return self.prompt is None


@dataclass(frozen=True)
class HttpCall:
    path: str
    body: dict[str, Any]
    stream: str | None  # "sse", "ndjson", or None for one JSON answer


@dataclass
class StreamState:
    """What a stream has told so far, for the last chunk."""

    finish: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    done: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def last_chunk(self) -> Chunk:
        return Chunk(
            text="",
            finish_reason=self.finish or FinishReason.STOP,
            usage=Usage(self.prompt_tokens, self.completion_tokens),
        )


# ---- requests ----


def _openai_sampling(sampling: SamplingParams) -> dict[str, Any]:
    values = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "seed": sampling.seed,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        # llama.cpp's server, vLLM and LM Studio accept these; sent only when asked for.
        "top_k": sampling.top_k,
        "min_p": sampling.min_p,
        "repeat_penalty": sampling.repeat_penalty,
    }
    body: dict[str, Any] = {key: value for key, value in values.items() if value is not None}
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    return body


def _ollama_options(sampling: SamplingParams) -> dict[str, Any]:
    values = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "min_p": sampling.min_p,
        "num_predict": sampling.max_tokens,
        "seed": sampling.seed,
        "repeat_penalty": sampling.repeat_penalty,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
    }
    options: dict[str, Any] = {key: value for key, value in values.items() if value is not None}
    if sampling.stop:
        options["stop"] = list(sampling.stop)
    return options


def _openai_message(message: ChatMessage) -> dict[str, Any]:
    if not message.images:
        return {"role": message.role.value, "content": message.content}
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}] if message.content else []
    parts += [{"type": "image_url", "image_url": {"url": image.as_data_url()}} for image in message.images]
    return {"role": message.role.value, "content": parts}


def _inline_base64(image: Image) -> tuple[str, str]:
    """(media type, base64 data) of an inline image or a data: URL."""
    if image.data:
        return image.mime_type or "image/png", base64.b64encode(image.data).decode("ascii")
    if image.url.startswith("data:") and ";base64," in image.url:
        header, data = image.url.removeprefix("data:").split(";base64,", 1)
        return header or "image/png", data
    raise InvalidArgument("This provider needs images inline (data: URLs or bytes), not by URL.", param="messages")


def _ollama_message(message: ChatMessage) -> dict[str, Any]:
    body: dict[str, Any] = {"role": message.role.value, "content": message.content}
    if message.images:
        body["images"] = [_inline_base64(image)[1] for image in message.images]
    return body


def _anthropic_block(image: Image) -> dict[str, Any]:
    if image.url and not image.url.startswith("data:"):
        return {"type": "image", "source": {"type": "url", "url": image.url}}
    media_type, data = _inline_base64(image)
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _openai_response_format(response_format: ResponseFormat) -> dict[str, Any]:
    if response_format.kind is ResponseFormatKind.JSON_OBJECT:
        return {"type": "json_object"}
    schema = {"name": response_format.name or "response", "schema": response_format.json_schema(), "strict": True}
    return {"type": "json_schema", "json_schema": schema}


def _no_json_mode(provider: str) -> InvalidArgument:
    return InvalidArgument(
        f"The upstream ({provider}) has no JSON output mode, so response_format cannot be honoured.",
        param="response_format",
    )


def build_call(config: RestConfig, request: UpstreamRequest, stream: bool) -> HttpCall:
    """The HTTP call for `request` on this provider and request format. A JSON response_format
    is passed through where the upstream API has one, and refused where it has none."""
    provider, request_format = config.provider, config.request_format
    constrained = request.response_format.constrains
    if provider is Provider.ANTHROPIC:
        if constrained:
            raise _no_json_mode("anthropic")
        return _anthropic_call(config, request, stream)
    if provider is Provider.OLLAMA or request_format is RequestFormat.OLLAMA:
        call = _ollama_call(config, request, stream)
        if constrained:
            kind = request.response_format.kind
            call.body["format"] = (
                "json" if kind is ResponseFormatKind.JSON_OBJECT else request.response_format.json_schema()
            )
        return call
    if constrained and (provider is Provider.GENERIC or request_format is not RequestFormat.OPENAI):
        raise _no_json_mode(f"{provider.value} with request format {request_format.value}")
    if request_format is RequestFormat.CHATML and request.is_chat:
        prompt = ChatTemplate.named_or_inline("chatml").render(request.messages)
        request = UpstreamRequest(request.sampling.with_defaults(SamplingParams(stop=("<|im_end|>",))), prompt=prompt)
    if provider is Provider.GENERIC:
        return _generic_call(config, request)
    # openai and lmstudio: the OpenAI API
    body: dict[str, Any] = {"model": config.remote_model, **_openai_sampling(request.sampling), "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if constrained:
        body["response_format"] = _openai_response_format(request.response_format)
    if request.is_chat:
        return HttpCall(
            "/v1/chat/completions",
            {**body, "messages": [_openai_message(m) for m in request.messages]},
            "sse" if stream else None,
        )
    return HttpCall("/v1/completions", {**body, "prompt": request.prompt}, "sse" if stream else None)


def _anthropic_call(config: RestConfig, request: UpstreamRequest, stream: bool) -> HttpCall:
    if not request.is_chat:
        raise InvalidArgument("Anthropic has no raw-prompt completion API; use chat.", param="prompt")
    sampling = request.sampling
    system = "\n\n".join(m.content for m in request.messages if m.role is Role.SYSTEM)
    messages = [
        {
            "role": "assistant" if m.role is Role.ASSISTANT else "user",
            "content": ([{"type": "text", "text": m.content}] if m.content else [])
            + [_anthropic_block(i) for i in m.images],
        }
        for m in request.messages
        if m.role is not Role.SYSTEM
    ]
    values = {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k}
    body: dict[str, Any] = {
        "model": config.remote_model,
        "max_tokens": sampling.max_tokens or 1024,  # required by the Messages API
        "messages": messages,
        "stream": stream,
        **{key: value for key, value in values.items() if value is not None},
    }
    if system:
        body["system"] = system
    if sampling.stop:
        body["stop_sequences"] = list(sampling.stop)
    return HttpCall("/v1/messages", body, "sse" if stream else None)


def _ollama_call(config: RestConfig, request: UpstreamRequest, stream: bool) -> HttpCall:
    body: dict[str, Any] = {
        "model": config.remote_model,
        "stream": stream,
        "options": _ollama_options(request.sampling),
    }
    if request.is_chat:
        return HttpCall(
            "/api/chat",
            {**body, "messages": [_ollama_message(m) for m in request.messages]},
            "ndjson" if stream else None,
        )
    return HttpCall("/api/generate", {**body, "prompt": request.prompt, "raw": True}, "ndjson" if stream else None)


def _generic_call(config: RestConfig, request: UpstreamRequest) -> HttpCall:
    body: dict[str, Any] = {"model": config.remote_model, **_openai_sampling(request.sampling)}
    if request.is_chat:
        body["messages"] = [_openai_message(m) for m in request.messages]
    else:
        body["prompt"] = request.prompt
    return HttpCall("", body, None)  # POSTed to the URL as configured; answers in one piece


# ---- answers ----


_OPENAI_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}
_ANTHROPIC_FINISH = {"max_tokens": FinishReason.LENGTH}


def parse_answer(provider: Provider, payload: dict[str, Any]) -> tuple[str, FinishReason, Usage]:
    """Text, finish reason and usage of a whole (non-streamed) answer."""
    if provider is Provider.ANTHROPIC:
        text = "".join(block.get("text", "") for block in payload.get("content", []) if block.get("type") == "text")
        usage = payload.get("usage") or {}
        return (
            text,
            _ANTHROPIC_FINISH.get(payload.get("stop_reason", ""), FinishReason.STOP),
            Usage(usage.get("input_tokens", 0), usage.get("output_tokens", 0)),
        )
    if provider is Provider.OLLAMA or "done" in payload:
        text = (payload.get("message") or {}).get("content") or payload.get("response", "")
        finish = FinishReason.LENGTH if payload.get("done_reason") == "length" else FinishReason.STOP
        return text, finish, Usage(payload.get("prompt_eval_count", 0), payload.get("eval_count", 0))
    if "choices" in payload:
        choice = payload["choices"][0]
        text = (choice.get("message") or {}).get("content") or choice.get("text") or ""
        usage = payload.get("usage") or {}
        return (
            text,
            _OPENAI_FINISH.get(choice.get("finish_reason") or "stop", FinishReason.STOP),
            Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
        )
    for key in ("text", "response", "output", "content", "generated_text"):  # generic servers
        if isinstance(payload.get(key), str):
            return payload[key], FinishReason.STOP, Usage()
    raise ValueError(f"unrecognized answer shape (keys: {', '.join(sorted(payload))})")


def parse_stream_event(provider: Provider, data: str, state: StreamState) -> str:
    """The text in one streamed event (an SSE data field or an NDJSON line); updates `state`."""
    if data.strip() == "[DONE]":
        state.done = True
        return ""
    event = json.loads(data)
    if provider is Provider.ANTHROPIC:
        kind = event.get("type")
        if kind == "message_start":
            state.prompt_tokens = event["message"].get("usage", {}).get("input_tokens", 0)
        elif kind == "content_block_delta":
            return event.get("delta", {}).get("text", "")
        elif kind == "message_delta":
            stop_reason = event.get("delta", {}).get("stop_reason") or ""
            state.finish = _ANTHROPIC_FINISH.get(stop_reason, FinishReason.STOP)
            state.completion_tokens = event.get("usage", {}).get("output_tokens", state.completion_tokens)
        elif kind == "message_stop":
            state.done = True
        elif kind == "error":
            raise UpstreamStreamError(event.get("error", {}).get("message", "stream error"))
        return ""
    if "done" in event:  # Ollama NDJSON
        if event["done"]:
            state.done = True
            state.finish = FinishReason.LENGTH if event.get("done_reason") == "length" else FinishReason.STOP
            state.prompt_tokens = event.get("prompt_eval_count", 0)
            state.completion_tokens = event.get("eval_count", 0)
        return (event.get("message") or {}).get("content") or event.get("response", "")
    if "error" in event:
        raise UpstreamStreamError(str(event["error"].get("message", event["error"])))
    if usage := event.get("usage"):
        state.prompt_tokens = usage.get("prompt_tokens", 0)
        state.completion_tokens = usage.get("completion_tokens", 0)
    text = ""
    for choice in event.get("choices", []):
        text += (choice.get("delta") or {}).get("content") or choice.get("text") or ""
        if reason := choice.get("finish_reason"):
            state.finish = _OPENAI_FINISH.get(reason, FinishReason.STOP)
    return text


class UpstreamStreamError(Exception):
    """The remote API reported an error inside its stream."""
