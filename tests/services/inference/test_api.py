import pytest

from llmmesh.inference.v1 import inference_service_pb2 as pb
from services.common.errors import InvalidArgument
from services.inference.api import (
    ChatMessage,
    ChatRequest,
    Chunk,
    Completed,
    CompletionRequest,
    FinishReason,
    ModelInfo,
    ModelState,
    Role,
    SamplingParams,
    TokenLogprob,
    ToolCall,
    Usage,
)


def test_chat_request_round_trips_through_protobuf() -> None:
    request = ChatRequest(
        model="live",
        messages=(ChatMessage(Role.SYSTEM, "be brief"), ChatMessage(Role.USER, "hi", name="ann")),
        sampling=SamplingParams(temperature=0.0, seed=0, top_k=0, stop=("\n",), max_tokens=5),
        request_id="r1",
    )
    assert ChatRequest.from_pb(request.to_pb()) == request
    assert ChatRequest.from_pb(request.to_stream_pb().request) == request


def test_explicit_zero_differs_from_unset() -> None:
    sampling = SamplingParams.from_pb(pb.SamplingParams(temperature=0.0))
    assert sampling.temperature == 0.0
    assert sampling.top_p is None


def test_completion_request_round_trips() -> None:
    request = CompletionRequest(model="m", prompt="1, 2,", sampling=SamplingParams(top_p=0.5), request_id="r2")
    assert CompletionRequest.from_pb(request.to_pb()) == request
    assert CompletionRequest.from_pb(request.to_stream_pb().request) == request


def test_adapter_settings_round_trip_and_scale_zero_is_kept() -> None:
    for scale in (0.0, 0.5, 1.0):
        request = CompletionRequest(model="m", prompt="x", request_id="r", adapter="abc", adapter_scale=scale)
        assert CompletionRequest.from_pb(request.to_pb()) == request
    assert CompletionRequest.from_pb(pb.CompleteRequest(prompt="x")).adapter_scale == 1.0


def test_request_id_is_generated_when_missing() -> None:
    assert ChatRequest.from_pb(pb.ChatRequest()).request_id.startswith("req-")


def test_unspecified_role_is_rejected() -> None:
    with pytest.raises(InvalidArgument):
        ChatMessage.from_pb(pb.ChatMessage(content=[pb.ContentPart(text="x")]))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("top_p", 0.0),
        ("max_tokens", 0),
        ("min_p", 1.5),
        ("presence_penalty", 3.0),
        ("repeat_penalty", 0.0),
        ("temperature", float("nan")),
    ],
)
def test_out_of_range_sampling_names_the_parameter(field: str, value: float) -> None:
    with pytest.raises(InvalidArgument) as raised:
        SamplingParams(**{field: value}).validate()
    assert raised.value.param == field


def test_defaults_fill_only_unset_fields() -> None:
    merged = SamplingParams(temperature=0.0, stop=("a",)).with_defaults(
        SamplingParams(temperature=0.7, top_k=40, stop=("b", "a"))
    )
    assert merged.temperature == 0.0
    assert merged.top_k == 40
    assert merged.stop == ("a", "b")


def test_empty_messages_rejected() -> None:
    with pytest.raises(InvalidArgument) as raised:
        ChatRequest(model="m", messages=()).validate()
    assert raised.value.param == "messages"


def test_chunk_round_trips_for_both_stream_types() -> None:
    last = Chunk(text="!", finish_reason=FinishReason.LENGTH, usage=Usage(3, 4))
    for message_type in (pb.ChatStreamResponse, pb.CompleteStreamResponse):
        message = last.to_pb(message_type, request_id="r", model="m")
        assert message.usage.total_tokens == 7
        assert Chunk.from_pb(message) == last
    middle = Chunk(text="a")
    assert Chunk.from_pb(middle.to_pb(pb.ChatStreamResponse, request_id="r", model="m")) == middle
    alternatives = (TokenLogprob("a", -0.25, b"a"), TokenLogprob("\ufffd", -2.0, b"\xe2\x82"))
    scored = Chunk(text="a", logprobs=(TokenLogprob("a", -0.25, b"a", alternatives),))
    for message_type in (pb.ChatStreamResponse, pb.CompleteStreamResponse):
        assert Chunk.from_pb(scored.to_pb(message_type, request_id="r", model="m")) == scored


def test_logprobs_round_trip_and_are_bounded() -> None:
    for logprobs in (None, 0, 20):
        request = CompletionRequest(model="m", prompt="x", request_id="r", logprobs=logprobs)
        assert CompletionRequest.from_pb(request.to_pb()) == request
        chat = ChatRequest(model="m", messages=(ChatMessage(Role.USER, "hi"),), request_id="r", logprobs=logprobs)
        assert ChatRequest.from_pb(chat.to_pb()) == chat
    with pytest.raises(InvalidArgument) as raised:
        CompletionRequest(model="m", prompt="x", logprobs=21).validate()
    assert raised.value.param == "logprobs"


def test_a_unary_reply_reads_as_one_completed_choice() -> None:
    """Chat: the message's text parts and tool calls; completion: its text and scored prompt."""
    call = ToolCall("call-1", "lookup", '{"q": 1}')
    logprob = TokenLogprob("a", -0.5, b"a")
    chat = pb.ChatResponse(
        model="m",
        message=ChatMessage(Role.ASSISTANT, "hello").to_pb(),
        finish_reason=pb.FINISH_REASON_TOOL_CALLS,
        usage=pb.Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5),
        logprobs=[logprob.to_pb()],
    )
    chat.message.tool_calls.append(call.to_pb())
    assert Completed.from_pb(chat, node="n1") == Completed(
        model="m",
        text="hello",
        finish_reason=FinishReason.TOOL_CALLS,
        usage=Usage(3, 2),
        tool_calls=(call,),
        node="n1",
        logprobs=(logprob,),
    )
    complete = pb.CompleteResponse(model="m", text="world", prompt_logprobs=[logprob.to_pb()])
    completed = Completed.from_pb(complete)
    assert (completed.text, completed.finish_reason) == ("world", FinishReason.STOP)
    assert completed.prompt_logprobs == (logprob,)


def test_model_info_round_trips() -> None:
    info = ModelInfo("m", "gguf", ModelState.LOADED, ("live",), 2048, True)
    assert ModelInfo.from_pb(info.to_pb()) == info
