"""Tool syntaxes: reading replies as they stream, writing conversations, and their grammars."""

from __future__ import annotations

import json

import llguidance
import pytest

from services.inference.api import ChatMessage, OutputFrame, Role, Tool, ToolCall, ToolChoice, ToolChoiceMode
from services.inference.backends import guidance
from services.inference.backends.gguf import _framed, _gbnf
from services.inference.server import tools

WEATHER = Tool(
    name="get_weather",
    description="Weather in a city",
    parameters=json.dumps({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
)
GENERIC_REPLY = (
    '{"tool_calls":[{"name":"get_weather","arguments":{"city":"Pa\\"ris}","n":{"a":[1,{"b":2}]}}},'
    '{"name":"get_weather","arguments":{}}]}'
)
HERMES_REPLY = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "{Rome}"}}\n</tool_call>'
)


def read(syntax: str, text: str, piece: int):  # type: ignore[no-untyped-def]
    reader = tools.SYNTAXES[syntax].reader()
    prose, deltas = "", []
    for start in range(0, len(text), piece):
        more, new = reader.feed(text[start : start + piece])
        prose += more
        deltas += new
    return prose, deltas, reader.finish()


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize(("syntax", "text"), [("generic", GENERIC_REPLY), ("hermes", HERMES_REPLY)])
def test_deltas_reassemble_into_the_calls_however_the_text_is_cut(syntax: str, text: str, piece: int) -> None:
    prose, deltas, (content, calls) = read(syntax, text, piece)
    assert prose == "" and content == "" and len(calls) == 2
    for index, call in enumerate(calls):
        mine = [d for d in deltas if d.index == index]
        assert mine[0].name == call.name == "get_weather" and all(d.id == call.id for d in mine)
        assert "".join(d.arguments for d in mine) == call.arguments
        json.loads(call.arguments)
    assert calls[0].id != calls[1].id


def test_arguments_stream_before_the_call_ends() -> None:
    reader = tools.SYNTAXES["generic"].reader()
    _, deltas = reader.feed('{"tool_calls":[{"name":"get_weather","arguments":{"city":"Pa')
    assert [d.arguments for d in deltas] == ["", '{"city":"Pa']


def test_generic_content_and_hermes_prose_stream_as_generated() -> None:
    assert read("generic", '{"content":"It is sunny."}', 4)[:3:2] == ("It is sunny.", ("", ()))
    prose, deltas, finished = read("hermes", "It is sunny in Paris.", 3)
    assert prose == "It is sunny in Paris." and not deltas and finished == ("", ())


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 7])
def test_generic_prose_decodes_escapes_split_between_pieces(piece: int) -> None:
    answer = r"Say \"hi\"\n\u00e9 \ud83d\ude00 \\ end"
    prose, deltas, finished = read("generic", f'{{ "content" : "{answer}"}}', piece)
    assert prose == json.loads(f'"{answer}"') and not deltas and finished == ("", ())


def test_a_reply_cut_at_max_tokens_keeps_its_calls_as_streamed() -> None:
    reader = tools.SYNTAXES["generic"].reader()
    _, deltas = reader.feed(
        '{"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}},{"name":"get_weather","ar'
    )
    first, second = reader.finish(cut=True)[1]
    assert first.arguments == '{"city":"Paris"}' and (second.name, second.arguments) == ("get_weather", "")
    assert [d.id for d in deltas if d.name] == [first.id, second.id]
    reader = tools.SYNTAXES["generic"].reader()
    reader.feed('{"tool_calls":[{"name":"get_weather","arguments":{"ci')
    [cut] = reader.finish(cut=True)[1]
    assert cut.arguments == '{"ci'  # what the deltas carried: the same reply either way
    reader = tools.SYNTAXES["generic"].reader()
    reader.feed('{"content":"Once upon')
    assert reader.finish(cut=True) == ("", ())  # the prose went out as it came


def test_syntax_follows_the_template_unless_configured_or_unenforceable() -> None:
    assert tools.syntax_for("chatml", None, framed_output=True).name == "hermes"
    assert tools.syntax_for("gemma", None, framed_output=True).name == "generic"
    assert tools.syntax_for("gemma", "hermes", framed_output=True).name == "hermes"
    assert tools.syntax_for("chatml", None, framed_output=False).name == "generic"


def test_hermes_writes_tools_calls_and_results_the_way_qwen_does() -> None:
    messages = (
        ChatMessage(Role.SYSTEM, "Be brief."),
        ChatMessage(Role.USER, "Weather in Paris?"),
        ChatMessage(Role.ASSISTANT, "", tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Paris"}'),)),
        ChatMessage(Role.TOOL, '{"temperature": 21}', tool_call_id="call_1"),
    )
    prepared = tools.SYNTAXES["hermes"].prepare_messages(messages, (WEATHER,), ToolChoice(ToolChoiceMode.AUTO))
    system, user, assistant, result = prepared
    assert system.content.startswith("Be brief.\n\n# Tools") and '"name": "get_weather"' in system.content
    assert "<tools>" in system.content and user.content == "Weather in Paris?"
    assert assistant.content == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert result.role is Role.USER and result.content == '<tool_response>\n{"temperature": 21}\n</tool_response>'


@pytest.mark.parametrize(
    "frame",
    [
        OutputFrame("<tool_call>\n", "\n</tool_call>", max_items=1),
        OutputFrame("<tool_call>\n", "\n</tool_call>", max_items=4, allow_text=True),
    ],
)
def test_framed_grammars_compile_for_llama_cpp_and_llguidance(frame: OutputFrame) -> None:
    schema = tools.call_schema((WEATHER,), ToolChoice(ToolChoiceMode.REQUIRED))
    assert _gbnf(json.dumps(schema), frame) is not None
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    gbnf = _framed(json_schema_to_gbnf(json.dumps(schema)), frame)
    assert gbnf.count("root ::=") == 1 and '"<tool_call>\\n" framed-json "\\n</tool_call>"' in gbnf
    assert not llguidance.LLMatcher.validate_grammar(guidance.framed_grammar(schema, frame))


def test_llama3_json_calls_stream_and_results_come_back_as_ipython() -> None:
    prose, deltas, (content, calls) = read("llama3_json", '{"name": "get_weather", "parameters": {"city": "Oslo"}}', 3)
    assert prose == "" and content == "" and [c.name for c in calls] == ["get_weather"]
    assert "".join(d.arguments for d in deltas) == calls[0].arguments == '{"city": "Oslo"}'
    assert read("llama3_json", "It is sunny.", 4)[0] == "It is sunny."
    assert tools.syntax_for("llama3", None, framed_output=True).name == "llama3_json"
    messages = (
        ChatMessage(Role.USER, "Weather in Oslo?"),
        ChatMessage(Role.ASSISTANT, "", tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Oslo"}'),)),
        ChatMessage(Role.TOOL, '{"temperature": 3}', tool_call_id="call_1"),
    )
    prepared = tools.SYNTAXES["llama3_json"].prepare_messages(messages, (WEATHER,), ToolChoice(ToolChoiceMode.AUTO))
    assert prepared[0].role is Role.SYSTEM and '"parameters": dictionary' in prepared[0].content
    assert prepared[2].content == '{"name": "get_weather", "parameters": {"city": "Oslo"}}'
    from services.common.chat_templates import ChatTemplate

    rendered = ChatTemplate.named_or_inline("llama3").render(prepared)
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n{"temperature": 3}' in rendered


def test_a_bare_object_frame_compiles_with_prose_allowed() -> None:
    syntax = tools.SYNTAXES["llama3_json"]
    fmt = syntax.reply_format((WEATHER,), ToolChoice(ToolChoiceMode.AUTO), parallel=True)
    assert fmt.frame is not None and fmt.frame.allow_text
    assert _gbnf(fmt.schema, fmt.frame) is not None
    assert not llguidance.LLMatcher.validate_grammar(guidance.framed_grammar(json.loads(fmt.schema), fmt.frame))
