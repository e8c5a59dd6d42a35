"""Chat templates: turn a conversation into the prompt text a local model was trained on.

Templates use the Hugging Face convention (`messages`, `add_generation_prompt`,
`bos_token`, `eos_token`) so that a model's own template works unchanged. They
render in Jinja's immutable sandbox: templates come from config files and model
metadata, and must not be able to reach Python internals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from services.common.errors import InvalidArgument
from services.inference.domain import ChatMessage, GenerationRequest

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

    def prompt_for(self, request: GenerationRequest) -> tuple[str, tuple[str, ...]]:
        """The prompt text and stop sequences of a request: chats are rendered and also stop at
        the end of the assistant turn; raw prompts pass through with the request's stops only."""
        if request.is_chat:
            return self.render(request.messages), request.sampling.stop + self.stop
        return request.prompt or "", request.sampling.stop

    def render(self, messages: Sequence[ChatMessage]) -> str:
        try:
            compiled = _compile(self.source)
            prompt = compiled.render(
                messages=[{"role": m.role.value, "content": m.content, "name": m.name} for m in messages],
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError as error:
            raise InvalidArgument(f"The chat template failed to render: {error}", param="messages") from error
        # The tokenizer adds BOS itself; a template that also writes it would double it.
        if self.bos_token and prompt.startswith(self.bos_token):
            prompt = prompt[len(self.bos_token) :]
        return prompt


@lru_cache(maxsize=32)
def _compile(source: str):  # type: ignore[no-untyped-def]
    return _environment().from_string(source)
