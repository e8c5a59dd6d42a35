"""Chat templates: turn a conversation into the prompt text a local model was trained on.

Templates use the Hugging Face convention (`messages`, `add_generation_prompt`,
`bos_token`, `eos_token`) so that a model's own template works unchanged. They
render in Jinja's immutable sandbox: templates come from config files and model
metadata, and must not be able to reach Python internals.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from services.common.errors import InvalidArgument

# Gemma has no system role: a system message is folded into the first user turn.
GEMMA = """
{%- if messages[0].role == 'system' -%}
  {%- set first_prefix = messages[0].content | trim + '\n\n' -%}
  {%- set turns = messages[1:] if messages | length > 1 else [{'role': 'user', 'content': ''}] -%}
{%- else -%}
  {%- set first_prefix = '' -%}
  {%- set turns = messages -%}
{%- endif -%}
{%- for m in turns -%}
  {{- '<start_of_turn>' + ('model' if m.role == 'assistant' else 'user') + '\n'
      + (first_prefix if loop.first else '') + (m.content | trim) + '<end_of_turn>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}
"""

CHATML = """
{%- for m in messages -%}
  {{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}
"""

LLAMA3 = """
{%- for m in messages -%}
  {{- '<|start_header_id|>' + ('ipython' if m.role == 'tool' else m.role) + '<|end_header_id|>\n\n'
      + (m.content | trim) + '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}
"""

# name -> (template, the stop sequences that end an assistant turn)
BUILTIN_TEMPLATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "gemma": (GEMMA, ("<end_of_turn>",)),
    "chatml": (CHATML, ("<|im_end|>",)),
    "llama3": (LLAMA3, ("<|eot_id|>",)),
}


def _raise_exception(message: str) -> None:
    raise InvalidArgument(f"The chat template rejected the conversation: {message}", param="messages")


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.globals["raise_exception"] = _raise_exception
    return env


# The roles a template may see (inference's Role and the trainer's examples use these).
ROLES = ("system", "user", "assistant", "tool")


class Turn(Protocol):
    """What a template reads of a message: inference's ChatMessage, the trainer's Turn."""

    @property
    def role(self) -> str: ...  # a StrEnum counts
    @property
    def content(self) -> str: ...
    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class ChatTemplate:
    source: str
    stop: tuple[str, ...] = ()
    bos_token: str = ""
    eos_token: str = ""

    @classmethod
    def named_or_inline(cls, template: str, *, bos_token: str = "", eos_token: str = "") -> ChatTemplate:
        """A builtin template by name ("gemma", "chatml", "llama3"), or `template` itself as Jinja source."""
        source, stop = BUILTIN_TEMPLATES.get(template, (template, ()))
        return cls(source=source, stop=stop, bos_token=bos_token, eos_token=eos_token)

    def render(self, messages: Sequence[Turn]) -> str:
        """The prompt text (for backends that send text on, such as REST dialects)."""
        return self.render_prompt(messages).text

    def render_prompt(self, messages: Sequence[Turn]) -> Prompt:
        """The rendered conversation, the client's text marked apart from the template's: the
        contents are rendered between two noncharacters, which are then cut out. Templates that
        trim a content see it trimmed already; one that reshapes it otherwise keeps the client's
        text, untrimmed, as plain text all the same."""
        clean = [{"role": str(m.role), "content": m.content.translate(_NO_MARKS), "name": m.name} for m in messages]
        plain = self._render(clean, lambda content: content)
        for mark in (_marked, _marked_trimmed):
            prompt = Prompt.from_marked(self._render(clean, mark))
            if prompt.text == plain:
                break
        return prompt

    def _render(self, messages: Sequence[dict[str, str]], content: Callable[[str], str]) -> str:
        try:
            rendered = _compile(self.source).render(
                messages=[{**m, "content": content(m["content"])} for m in messages],
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError as error:
            raise InvalidArgument(f"The chat template failed to render: {error}", param="messages") from error
        # The tokenizer adds BOS itself; a template that also writes it would double it.
        if self.bos_token and rendered.startswith(self.bos_token):
            rendered = rendered[len(self.bos_token) :]
        return str(rendered)


# Unicode noncharacters, for a process's internal use: they mark where the client's text is.
_OPEN, _CLOSE = "\ufdd0", "\ufdd1"
_NO_MARKS = str.maketrans("", "", _OPEN + _CLOSE)


def _marked(content: str) -> str:
    return _OPEN + content + _CLOSE


def _marked_trimmed(content: str) -> str:
    return _OPEN + content.strip() + _CLOSE


@dataclass(frozen=True)
class Prompt:
    """Prompt text in pieces, each (text, from_template). Only the template's pieces may spell
    special tokens: `<end_of_turn>` typed by a client is tokenized as the plain text it is, so
    no message can close its turn and open another (prompt injection through the template)."""

    pieces: tuple[tuple[str, bool], ...]

    @classmethod
    def raw(cls, text: str) -> Prompt:
        """Text that is a whole prompt, turn markers and all (a raw completion's)."""
        return cls(((text, True),))

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.pieces)

    @classmethod
    def from_marked(cls, rendered: str) -> Prompt:
        """Pieces from text whose client parts lie between _OPEN and _CLOSE. When a template
        cut a content short, a mark is missing: the text up to the next mark counts as the
        client's, so the doubt always falls on the side of plain text."""
        parts = re.split(f"([{_OPEN}{_CLOSE}])", rendered)  # text, mark, text, mark, ..., text
        pieces: list[tuple[str, bool]] = []
        for index in range(0, len(parts), 2):
            before = parts[index - 1] if index else ""
            after = parts[index + 1] if index + 1 < len(parts) else ""
            if parts[index]:
                pieces.append((parts[index], not (before == _OPEN or after == _CLOSE)))
        return cls(tuple(pieces))

    def token_ids(self, tokenize: Callable[[str, bool, bool], list[int]]) -> list[int]:
        """The prompt's tokens, from `tokenize(text, first, special)`: `first` asks for BOS
        (the first piece only), `special` lets the text spell special tokens (the template's)."""
        tokens: list[int] = []
        for index, (text, from_template) in enumerate(self.pieces or (("", True),)):
            tokens += tokenize(text, index == 0, from_template)
        return tokens


@lru_cache(maxsize=32)
def _compile(source: str):  # type: ignore[no-untyped-def]
    return _environment().from_string(source)


def hf_token_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    """`prompt`'s tokens from a Hugging Face tokenizer, or one that forwards `encode` to it (MLX's)."""
    return prompt.token_ids(
        lambda text, first, special: list(
            tokenizer.encode(text, add_special_tokens=first, split_special_tokens=not special)
        )
    )
