import pytest

from services.common.errors import InvalidArgument
from services.inference.chat_templates import ChatTemplate
from services.inference.domain import ChatMessage, Role


def test_gemma_turn_format_folds_system_into_first_user_turn() -> None:
    template = ChatTemplate.named_or_inline("gemma")
    prompt = template.render(
        [
            ChatMessage(Role.SYSTEM, "Be brief."),
            ChatMessage(Role.USER, "Hi"),
            ChatMessage(Role.ASSISTANT, "Hello!"),
            ChatMessage(Role.USER, "Bye"),
        ]
    )
    assert prompt == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert template.stop == ("<end_of_turn>",)


def test_inline_template_in_hugging_face_convention() -> None:
    template = ChatTemplate.named_or_inline(
        "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}",
        bos_token="<s>",
    )
    # The tokenizer adds BOS itself, so a template's own BOS is stripped.
    assert template.render([ChatMessage(Role.USER, "x")]) == "[user]x[assistant]"


def test_template_errors_are_invalid_argument() -> None:
    template = ChatTemplate.named_or_inline("{{ raise_exception('no system messages') }}")
    with pytest.raises(InvalidArgument, match="no system messages"):
        template.render([ChatMessage(Role.USER, "x")])


def test_templates_are_sandboxed() -> None:
    template = ChatTemplate.named_or_inline("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(InvalidArgument):
        template.render([ChatMessage(Role.USER, "x")])
