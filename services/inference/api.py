"""The inference service's contract: what callers send and get back, and its one mapping to and
from protobuf. The engine's own types live in generation.py."""

from __future__ import annotations

import base64
import dataclasses
import math
import re
import uuid
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, TypeVar

from llmmesh.inference.v1 import inference_service_pb2 as pb
from services.common import sampling
from services.common.errors import InvalidArgument
from services.common.proto_enum import ProtoEnum
from services.common.schema_limits import checked_schema

MAX_STOP_SEQUENCES = sampling.MAX_STOP_SEQUENCES
MAX_STOP_SEQUENCE_CHARS = sampling.MAX_STOP_SEQUENCE_CHARS


class Role(ProtoEnum):
    __pb__ = pb.Role

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"

    @classmethod
    def from_pb(cls, value: int) -> Role:
        if (role := cls.parse_pb(value)) is None:
            raise InvalidArgument("Every message needs a role (system, user, assistant or tool).", param="messages")
        return role


class FinishReason(ProtoEnum):
    __pb__ = pb.FinishReason

    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"


class ModelState(ProtoEnum):
    __pb__ = pb.ModelState

    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    FAILED = "failed"


class WaitState(ProtoEnum):
    __pb__ = pb.WaitState

    QUEUED = "queued"
    LOADING_MODEL = "loading_model"


@dataclass(frozen=True)
class WaitUpdate:
    """Why a request has produced nothing yet: its queue position, or the model load it waits for."""

    state: WaitState
    model: str
    position: int = 0

    def to_pb(self) -> pb.WaitStatus:
        return pb.WaitStatus(state=self.state.to_pb(), queue_position=self.position, model=self.model)

    @classmethod
    def from_pb(cls, status: pb.WaitStatus) -> WaitUpdate:
        return cls(WaitState.from_pb(status.state), status.model, status.queue_position)


class ResponseFormatKind(ProtoEnum):
    __pb__ = pb.ResponseFormatType

    TEXT = "text"
    JSON_OBJECT = "json_object"
    JSON_SCHEMA = "json_schema"


@dataclass(frozen=True)
class OutputFrame:
    """Literal text around schema-constrained JSON, for tool syntaxes such as
    `<tool_call>{...}</tool_call>`: the output is 1 to `max_items` framed items joined by
    `separator`, or, with `allow_text`, plain text that does not begin like `open`."""

    open: str
    close: str
    separator: str = "\n"
    max_items: int = 1
    allow_text: bool = False


@dataclass(frozen=True)
class ResponseFormat:
    """An output constraint. `schema` is JSON text (JSON_SCHEMA only). `frame` (in-process
    only, never on the wire) puts the JSON between literal text."""

    kind: ResponseFormatKind = ResponseFormatKind.TEXT
    schema: str = ""
    name: str = ""
    frame: OutputFrame | None = None

    @property
    def constrains(self) -> bool:
        return self.kind is not ResponseFormatKind.TEXT

    def json_schema(self) -> dict[str, Any]:
        """The schema the output must match; any JSON object for JSON_OBJECT."""
        if self.kind is ResponseFormatKind.JSON_OBJECT:
            return {"type": "object"}
        return checked_schema(self.schema, param="response_format")

    def to_pb(self) -> pb.ResponseFormat:
        return pb.ResponseFormat(
            type=self.kind.to_pb(),
            json_schema=self.schema,
            name=self.name,
        )

    @classmethod
    def from_pb(cls, value: pb.ResponseFormat) -> ResponseFormat:
        kind = ResponseFormatKind.parse_pb(value.type) or ResponseFormatKind.TEXT
        format_ = cls(kind, value.json_schema, value.name)
        if kind is ResponseFormatKind.JSON_SCHEMA:
            format_.json_schema()  # rejects a malformed schema before any work starts
        return format_


@dataclass(frozen=True)
class Tool:
    """A function the model may call; `parameters` is a JSON Schema as JSON text."""

    name: str
    description: str = ""
    parameters: str = ""

    def parameters_schema(self) -> dict[str, Any]:
        if not self.parameters:
            return {"type": "object", "properties": {}}
        return checked_schema(self.parameters, param="tools")

    def to_pb(self) -> pb.Tool:
        return pb.Tool(name=self.name, description=self.description, parameters_json_schema=self.parameters)

    @classmethod
    def from_pb(cls, tool: pb.Tool) -> Tool:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", tool.name):
            raise InvalidArgument(f"Tool name '{tool.name}' must match [A-Za-z0-9_-]{{1,64}}.", param="tools")
        parsed = cls(tool.name, tool.description, tool.parameters_json_schema)
        parsed.parameters_schema()  # rejects a malformed schema before any work starts
        return parsed


class ToolChoiceMode(ProtoEnum):
    __pb__ = pb.ToolChoiceMode

    NONE = "none"
    AUTO = "auto"
    REQUIRED = "required"
    FUNCTION = "function"


@dataclass(frozen=True)
class ToolChoice:
    mode: ToolChoiceMode = ToolChoiceMode.AUTO
    function_name: str = ""

    def to_pb(self) -> pb.ToolChoice:
        return pb.ToolChoice(mode=self.mode.to_pb(), function_name=self.function_name)

    @classmethod
    def from_pb(cls, choice: pb.ToolChoice) -> ToolChoice:
        return cls(ToolChoiceMode.parse_pb(choice.mode) or ToolChoiceMode.AUTO, choice.function_name)


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call as it is generated: the first piece of a call carries its id and
    name, the following ones the next part of its arguments (JSON text)."""

    index: int
    id: str
    name: str = ""
    arguments: str = ""

    def to_pb(self) -> pb.ToolCallDelta:
        return pb.ToolCallDelta(index=self.index, id=self.id, name=self.name, arguments_json=self.arguments)

    @classmethod
    def from_pb(cls, delta: pb.ToolCallDelta) -> ToolCallDelta:
        return cls(delta.index, delta.id, delta.name, delta.arguments_json)


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, as text

    def to_pb(self) -> pb.ToolCall:
        return pb.ToolCall(id=self.id, name=self.name, arguments_json=self.arguments)

    @classmethod
    def from_pb(cls, call: pb.ToolCall) -> ToolCall:
        return cls(call.id, call.name, call.arguments_json)


@dataclass(frozen=True)
class Image:
    """An image by URL (https: or data:), or inline bytes with their media type."""

    url: str = ""
    data: bytes = b""
    mime_type: str = ""

    def as_data_url(self) -> str:
        """Inline bytes as a data: URL; a URL is returned as it is."""
        if self.data:
            return f"data:{self.mime_type or 'image/png'};base64,{base64.b64encode(self.data).decode('ascii')}"
        return self.url

    def to_pb(self) -> pb.ImagePart:
        return pb.ImagePart(url=self.url, data=self.data, mime_type=self.mime_type)

    @classmethod
    def from_pb(cls, image: pb.ImagePart) -> Image:
        if not image.url and not image.data:
            raise InvalidArgument("An image part needs a url or data.", param="messages")
        return cls(url=image.url, data=image.data, mime_type=image.mime_type)


@dataclass(frozen=True)
class ChatMessage:
    """A turn: its text parts joined, and its images (after the text, in order)."""

    role: Role
    content: str
    name: str = ""
    images: tuple[Image, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""

    def to_pb(self) -> pb.ChatMessage:
        parts = [pb.ContentPart(text=self.content)] + [pb.ContentPart(image=i.to_pb()) for i in self.images]
        return pb.ChatMessage(
            role=self.role.to_pb(),
            content=parts,
            name=self.name,
            tool_calls=[call.to_pb() for call in self.tool_calls],
            tool_call_id=self.tool_call_id,
        )

    @classmethod
    def from_pb(cls, message: pb.ChatMessage) -> ChatMessage:
        return cls(
            role=Role.from_pb(message.role),
            content="".join(part.text for part in message.content),
            name=message.name,
            images=tuple(Image.from_pb(part.image) for part in message.content if part.HasField("image")),
            tool_calls=tuple(ToolCall.from_pb(call) for call in message.tool_calls),
            tool_call_id=message.tool_call_id,
        )


# (field, lower bound, upper bound, lower bound inclusive): checked by SamplingParams.validate.
@dataclass(frozen=True)
class SamplingParams:
    """Decoding controls. None means "not set": the model's default applies."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repeat_penalty: float | None = None

    def validate(self) -> SamplingParams:
        for name, bound in sampling.BOUNDS.items():  # declared once, in services/common/sampling.py
            value = getattr(self, name)
            if value is None:
                continue
            too_low = value < bound.low if bound.low_inclusive else value <= bound.low
            if math.isnan(value) or too_low or value > bound.high:
                raise InvalidArgument(f"'{name}' must be in {bound.describe()}; got {value}.", param=name)
        if len(self.stop) > MAX_STOP_SEQUENCES:
            raise InvalidArgument(f"At most {MAX_STOP_SEQUENCES} stop sequences are allowed.", param="stop")
        if any(not s for s in self.stop):
            raise InvalidArgument("Stop sequences must not be empty.", param="stop")
        if any(len(s) > MAX_STOP_SEQUENCE_CHARS for s in self.stop):
            raise InvalidArgument(
                f"A stop sequence may be at most {MAX_STOP_SEQUENCE_CHARS} characters long.", param="stop"
            )
        return self

    def with_defaults(self, defaults: SamplingParams) -> SamplingParams:
        """Fill every unset field from `defaults`; stop sequences are merged."""
        merged = {
            f.name: getattr(defaults, f.name) if getattr(self, f.name) is None else getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "stop"
        }
        return SamplingParams(**merged, stop=tuple(dict.fromkeys(self.stop + defaults.stop)))

    def to_pb(self) -> pb.SamplingParams:
        scalars = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "stop"}
        return pb.SamplingParams(**{k: v for k, v in scalars.items() if v is not None}, stop=list(self.stop))

    @classmethod
    def from_pb(cls, params: pb.SamplingParams) -> SamplingParams:
        scalars = {
            f.name: getattr(params, f.name) if params.HasField(f.name) else None  # type: ignore[arg-type]
            for f in dataclasses.fields(cls)
            if f.name != "stop"
        }
        return cls(**scalars, stop=tuple(params.stop))


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # of prompt_tokens, reused from the prefix cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_pb(self) -> pb.Usage:
        return pb.Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.total_tokens,
            cached_prompt_tokens=self.cached_prompt_tokens,
        )

    @classmethod
    def from_pb(cls, usage: pb.Usage) -> Usage:
        return cls(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_prompt_tokens=usage.cached_prompt_tokens,
        )


MAX_TOP_LOGPROBS = 20  # OpenAI's bound for top_logprobs


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token, its log-probability, and the most likely tokens at its place
    (`top`, empty on those alternatives themselves)."""

    token: str
    logprob: float
    token_bytes: bytes
    top: tuple[TokenLogprob, ...] = ()

    def to_pb(self) -> pb.TokenLogprob:
        return pb.TokenLogprob(
            token=self.token, logprob=self.logprob, bytes=self.token_bytes, top_logprobs=[t.to_pb() for t in self.top]
        )

    @classmethod
    def from_pb(cls, value: pb.TokenLogprob) -> TokenLogprob:
        return cls(value.token, value.logprob, value.bytes, tuple(cls.from_pb(t) for t in value.top_logprobs))


def check_logprobs(logprobs: int | None) -> None:
    if logprobs is not None and not 0 <= logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidArgument(f"'logprobs' must be in [0, {MAX_TOP_LOGPROBS}]; got {logprobs}.", param="logprobs")


@dataclass(frozen=True)
class Chunk:
    """A piece of generated text. Only the last chunk of a generation has finish_reason and usage;
    chunks sent while the request waits have no text and a wait_status."""

    text: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    wait_status: WaitUpdate | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_deltas: tuple[ToolCallDelta, ...] = ()
    tokens: int = 1  # generated tokens this chunk's text holds (several when a slow reader was behind)
    logprobs: tuple[TokenLogprob, ...] = ()  # of the tokens generated since the previous chunk, when asked for
    prompt_logprobs: tuple[TokenLogprob, ...] = ()  # the scored prompt (completions), on the first chunk

    def to_pb(self, message_type: type[_StreamResponse], *, request_id: str, model: str) -> _StreamResponse:
        """Chat and completion streams use different message types with the same fields
        (only chat ones have tool calls)."""
        message = message_type(
            request_id=request_id,
            model=model,
            delta=self.text,
            finish_reason=self.finish_reason.to_pb() if self.finish_reason else pb.FINISH_REASON_UNSPECIFIED,
            usage=self.usage.to_pb() if self.usage else None,
            wait_status=self.wait_status.to_pb() if self.wait_status else None,
            logprobs=[t.to_pb() for t in self.logprobs],
        )
        if isinstance(message, pb.ChatStreamResponse):
            message.tool_calls.extend(c.to_pb() for c in self.tool_calls)
            message.tool_call_deltas.extend(d.to_pb() for d in self.tool_call_deltas)
        else:
            message.prompt_logprobs.extend(t.to_pb() for t in self.prompt_logprobs)
        return message

    @classmethod
    def from_pb(cls, response: pb.ChatStreamResponse | pb.CompleteStreamResponse) -> Chunk:
        return cls(
            text=response.delta,
            finish_reason=FinishReason.parse_pb(response.finish_reason),
            usage=Usage.from_pb(response.usage) if response.HasField("usage") else None,
            wait_status=WaitUpdate.from_pb(response.wait_status) if response.HasField("wait_status") else None,
            tool_calls=tuple(ToolCall.from_pb(c) for c in getattr(response, "tool_calls", ())),
            tool_call_deltas=tuple(ToolCallDelta.from_pb(d) for d in getattr(response, "tool_call_deltas", ())),
            logprobs=tuple(TokenLogprob.from_pb(t) for t in response.logprobs),
            prompt_logprobs=tuple(TokenLogprob.from_pb(t) for t in getattr(response, "prompt_logprobs", ())),
        )


@dataclass(frozen=True)
class Completed:
    """One finished choice of a unary call, and the fleet node that answered it."""

    model: str
    text: str
    finish_reason: FinishReason
    usage: Usage
    tool_calls: tuple[ToolCall, ...] = ()
    node: str = ""
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_logprobs: tuple[TokenLogprob, ...] = ()

    @classmethod
    def from_pb(cls, response: pb.ChatResponse | pb.CompleteResponse, node: str = "") -> Completed:
        """A unary reply: a chat's message (its text parts and tool calls) or a completion's text."""
        if isinstance(response, pb.ChatResponse):
            text = "".join(part.text for part in response.message.content)
            tool_calls = tuple(ToolCall.from_pb(call) for call in response.message.tool_calls)
            prompt_logprobs: tuple[TokenLogprob, ...] = ()
        else:
            text, tool_calls = response.text, ()
            prompt_logprobs = tuple(TokenLogprob.from_pb(t) for t in response.prompt_logprobs)
        return cls(
            model=response.model,
            text=text,
            finish_reason=FinishReason.parse_pb(response.finish_reason) or FinishReason.STOP,
            usage=Usage.from_pb(response.usage),
            tool_calls=tool_calls,
            node=node,
            logprobs=tuple(TokenLogprob.from_pb(t) for t in response.logprobs),
            prompt_logprobs=prompt_logprobs,
        )

    def to_pb(self, message_type: type[_Response], *, request_id: str) -> _Response:
        """The unary reply: a chat's assistant message, or a completion's text."""
        message = message_type(
            request_id=request_id,
            model=self.model,
            finish_reason=self.finish_reason.to_pb(),
            usage=self.usage.to_pb(),
            logprobs=[t.to_pb() for t in self.logprobs],
        )
        if isinstance(message, pb.ChatResponse):
            assistant = ChatMessage(role=Role.ASSISTANT, content=self.text, tool_calls=self.tool_calls)
            message.message.CopyFrom(assistant.to_pb())
        else:
            message.text = self.text
            message.prompt_logprobs.extend(t.to_pb() for t in self.prompt_logprobs)
        return message


@dataclass
class Collector:
    """One choice's chunks gathered into its Completed: the one place a stream becomes a reply."""

    model: str
    node: str = ""
    parts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: tuple[TokenLogprob, ...] = ()

    def add(self, chunk: Chunk) -> Completed | None:
        """Take one chunk; the whole reply once the last one (with the finish reason) arrives."""
        self.parts.append(chunk.text)
        self.logprobs.extend(chunk.logprobs)
        self.prompt_logprobs = self.prompt_logprobs or chunk.prompt_logprobs
        if chunk.finish_reason is None:
            return None
        return Completed(
            model=self.model,
            text="".join(self.parts),
            finish_reason=chunk.finish_reason,
            usage=chunk.usage or Usage(),
            tool_calls=chunk.tool_calls,
            node=self.node,
            logprobs=tuple(self.logprobs),
            prompt_logprobs=self.prompt_logprobs,
        )


@dataclass(frozen=True)
class StreamEvent:
    """One chunk of one choice of a streamed call, and the fleet node that sends it."""

    index: int
    model: str
    chunk: Chunk
    node: str = ""


_StreamResponse = TypeVar("_StreamResponse", pb.ChatStreamResponse, pb.CompleteStreamResponse)
_Response = TypeVar("_Response", pb.ChatResponse, pb.CompleteResponse)


def _new_request_id() -> str:
    return f"req-{uuid.uuid4().hex}"


def check_adapter_scale(scale: float) -> None:
    if not 0.0 <= scale <= 2.0:
        raise InvalidArgument("'adapter_settings.scale' must be between 0 and 2.", param="adapter_settings.scale")


def adapter_settings_pb(adapter: str, scale: float) -> pb.AdapterSettings | None:
    if not adapter:
        return None
    settings = pb.AdapterSettings(adapter_id=adapter)
    if scale != 1.0:  # unset means 1.0
        settings.scale = scale
    return settings


@dataclass(frozen=True, kw_only=True)
class GenerationOptions:
    """What chat and completion requests share: decoding, output format, cache, adapter and tenant."""

    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = field(default_factory=_new_request_id)
    response_format: ResponseFormat = field(default_factory=ResponseFormat)
    cache: bool | None = None  # response cache opt-in; None: the model's setting
    adapter: str = ""  # a LoRA adapter id from the adapter store; empty: the base model
    adapter_scale: float = 1.0  # how strongly it applies: 0 (the base alone) to 2; 1.0 as trained
    tenant: str = ""  # whose cache entries and adapters it may use ("": a trusted caller); see the .proto
    logprobs: int | None = None  # each token's log-probability and this many alternatives; None: none
    low_priority: bool = False  # batch work: yields to interactive requests (see the .proto)

    def validate_options(self) -> None:
        self.sampling.validate()
        check_adapter_scale(self.adapter_scale)
        check_logprobs(self.logprobs)

    def options_pb(self) -> dict[str, Any]:
        """The shared fields as keyword arguments of pb.ChatRequest and pb.CompleteRequest."""
        return {
            "sampling": self.sampling.to_pb(),
            "request_id": self.request_id,
            "response_format": self.response_format.to_pb(),
            "cache": self.cache,
            "adapter_settings": adapter_settings_pb(self.adapter, self.adapter_scale),
            "tenant": self.tenant,
            "logprobs": self.logprobs,
            "low_priority": self.low_priority,
        }

    @staticmethod
    def options_from_pb(request: pb.ChatRequest | pb.CompleteRequest) -> dict[str, Any]:
        adapter = request.adapter_settings
        return {
            "sampling": SamplingParams.from_pb(request.sampling),
            "request_id": request.request_id or _new_request_id(),
            "response_format": ResponseFormat.from_pb(request.response_format),
            "cache": request.cache if request.HasField("cache") else None,
            "adapter": adapter.adapter_id,
            "adapter_scale": adapter.scale if adapter.HasField("scale") else 1.0,
            "tenant": request.tenant,
            "logprobs": request.logprobs if request.HasField("logprobs") else None,
            "low_priority": request.low_priority,
        }


@dataclass(frozen=True)
class ChatRequest(GenerationOptions):
    model: str
    messages: tuple[ChatMessage, ...]
    _: KW_ONLY  # the rest by name, as the shared options are
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool = True

    def validate(self) -> ChatRequest:
        if not self.messages:
            raise InvalidArgument("'messages' must contain at least one message.", param="messages")
        self.validate_options()
        if self.tool_choice.mode is ToolChoiceMode.FUNCTION and self.tool_choice.function_name not in {
            tool.name for tool in self.tools
        }:
            raise InvalidArgument(
                f"tool_choice names '{self.tool_choice.function_name}', which is not in 'tools'.", param="tool_choice"
            )
        if self.tool_choice.mode in (ToolChoiceMode.REQUIRED, ToolChoiceMode.FUNCTION) and not self.tools:
            raise InvalidArgument("tool_choice requires 'tools'.", param="tool_choice")
        return self

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice.mode is not ToolChoiceMode.NONE

    def to_pb(self) -> pb.ChatRequest:
        return pb.ChatRequest(
            model=self.model,
            messages=[m.to_pb() for m in self.messages],
            tools=[tool.to_pb() for tool in self.tools],
            tool_choice=self.tool_choice.to_pb(),
            parallel_tool_calls=self.parallel_tool_calls,
            **self.options_pb(),
        )

    def to_stream_pb(self) -> pb.ChatStreamRequest:
        return pb.ChatStreamRequest(request=self.to_pb())

    @classmethod
    def from_pb(cls, request: pb.ChatRequest) -> ChatRequest:
        return cls(
            model=request.model,
            messages=tuple(ChatMessage.from_pb(m) for m in request.messages),
            tools=tuple(Tool.from_pb(tool) for tool in request.tools),
            tool_choice=ToolChoice.from_pb(request.tool_choice),
            parallel_tool_calls=request.parallel_tool_calls if request.HasField("parallel_tool_calls") else True,
            **cls.options_from_pb(request),
        )


@dataclass(frozen=True)
class CompletionRequest(GenerationOptions):
    model: str
    prompt: str
    _: KW_ONLY
    prompt_logprobs: bool = False  # with logprobs: also score the prompt (echo with logprobs)

    def validate(self) -> CompletionRequest:
        if not self.prompt:
            raise InvalidArgument("'prompt' must not be empty.", param="prompt")
        if self.prompt_logprobs and self.logprobs is None:
            raise InvalidArgument("'prompt_logprobs' needs 'logprobs'.", param="prompt_logprobs")
        self.validate_options()
        return self

    def to_pb(self) -> pb.CompleteRequest:
        return pb.CompleteRequest(
            model=self.model, prompt=self.prompt, prompt_logprobs=self.prompt_logprobs, **self.options_pb()
        )

    def to_stream_pb(self) -> pb.CompleteStreamRequest:
        return pb.CompleteStreamRequest(request=self.to_pb())

    @classmethod
    def from_pb(cls, request: pb.CompleteRequest) -> CompletionRequest:
        return cls(
            model=request.model,
            prompt=request.prompt,
            prompt_logprobs=request.prompt_logprobs,
            **cls.options_from_pb(request),
        )


MAX_EMBED_TEXTS = 256


@dataclass(frozen=True)
class EmbeddingRequest:
    """Texts to embed on a model whose backend serves embeddings (a managed server)."""

    model: str
    texts: tuple[str, ...]

    def validate(self) -> EmbeddingRequest:
        if not self.texts:
            raise InvalidArgument("'input' must hold at least one text.", param="input")
        if len(self.texts) > MAX_EMBED_TEXTS:
            raise InvalidArgument(f"'input' may hold at most {MAX_EMBED_TEXTS} texts.", param="input")
        if not all(self.texts):
            raise InvalidArgument("'input' must not hold an empty text.", param="input")
        return self

    def to_pb(self) -> pb.EmbedRequest:
        return pb.EmbedRequest(model=self.model, texts=self.texts)

    @classmethod
    def from_pb(cls, message: pb.EmbedRequest) -> EmbeddingRequest:
        return cls(model=message.model, texts=tuple(message.texts))


@dataclass(frozen=True)
class Embeddings:
    """One vector per text, in order."""

    model: str
    vectors: tuple[tuple[float, ...], ...]
    prompt_tokens: int

    def to_pb(self) -> pb.EmbedResponse:
        return pb.EmbedResponse(
            model=self.model,
            embeddings=[pb.Embedding(values=vector) for vector in self.vectors],
            usage=Usage(prompt_tokens=self.prompt_tokens).to_pb(),
        )

    @classmethod
    def from_pb(cls, message: pb.EmbedResponse) -> Embeddings:
        vectors = tuple(tuple(embedding.values) for embedding in message.embeddings)
        return cls(model=message.model, vectors=vectors, prompt_tokens=message.usage.prompt_tokens)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    backend: str
    state: ModelState
    aliases: tuple[str, ...]
    context_length: int
    is_default: bool
    memory_mb: int = 0
    requests_running: int = 0
    supports_images: bool = False

    def to_pb(self) -> pb.Model:
        return pb.Model(
            name=self.name,
            backend=self.backend,
            state=self.state.to_pb(),
            aliases=list(self.aliases),
            context_length=self.context_length,
            is_default=self.is_default,
            memory_mb=self.memory_mb,
            requests_running=self.requests_running,
            supports_images=self.supports_images,
        )

    @classmethod
    def from_pb(cls, model: pb.Model) -> ModelInfo:
        return cls(
            name=model.name,
            backend=model.backend,
            state=ModelState.from_pb(model.state),
            aliases=tuple(model.aliases),
            context_length=model.context_length,
            is_default=model.is_default,
            memory_mb=model.memory_mb,
            requests_running=model.requests_running,
            supports_images=model.supports_images,
        )


@dataclass(frozen=True)
class QueueLine:
    model: str
    state: ModelState
    running: int
    waiting: int

    def to_pb(self) -> pb.ModelQueue:
        return pb.ModelQueue(model=self.model, state=self.state.to_pb(), running=self.running, waiting=self.waiting)

    @classmethod
    def from_pb(cls, line: pb.ModelQueue) -> QueueLine:
        return cls(line.model, ModelState.from_pb(line.state), line.running, line.waiting)


@dataclass(frozen=True)
class Setting:
    key: str
    value: str
    description: str
    updated_at: str = ""  # RFC 3339; empty when not stored
    effective_value: str = ""  # in force now, from the store, the environment or the registry

    def to_pb(self) -> pb.Setting:
        return pb.Setting(
            key=self.key,
            value=self.value,
            description=self.description,
            updated_at=self.updated_at,
            effective_value=self.effective_value,
        )

    @classmethod
    def from_pb(cls, setting: pb.Setting) -> Setting:
        return cls(setting.key, setting.value, setting.description, setting.updated_at, setting.effective_value)
