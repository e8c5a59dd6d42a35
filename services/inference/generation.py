"""The engine's own types: what a backend is asked to generate, and a generation under way."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from services.common.chat_templates import ChatTemplate, Prompt
from services.inference.api import ChatMessage, Chunk, Collector, Completed, ResponseFormat, Role, SamplingParams


@dataclass(frozen=True)
class GenerationRequest:
    """What a backend receives: either chat `messages` or a raw `prompt`, with sampling already resolved."""

    request_id: str
    sampling: SamplingParams
    messages: tuple[ChatMessage, ...] = ()
    prompt: str | None = None
    adapter: str = ""  # a LoRA adapter loaded on the backend; empty: the base model
    adapter_scale: float = 1.0  # how strongly it applies (1.0: as trained)
    response_format: ResponseFormat = field(default_factory=ResponseFormat)
    logprobs: int | None = None  # each token's log-probability and this many alternatives; None: none
    low_priority: bool = False  # batch work: batching backends pause it while interactive requests run
    prompt_logprobs: bool = False  # also score the prompt (with `logprobs` alternatives)

    @property
    def is_chat(self) -> bool:
        return self.prompt is None

    @property
    def has_images(self) -> bool:
        return any(message.images for message in self.messages)

    @property
    def last_user_message(self) -> str:
        return next((m.content for m in reversed(self.messages) if m.role is Role.USER), "")

    def prompt_for(self, template: ChatTemplate) -> tuple[Prompt, tuple[str, ...]]:
        """The prompt and stop sequences: chats are rendered and also stop at the end of the
        assistant turn; a raw prompt passes through, whole, as the client's own template
        (completions on a base model write their own turn markers), with the request's stops only."""
        if self.is_chat:
            return template.render_prompt(self.messages), self.sampling.stop + template.stop
        return Prompt.raw(self.prompt or ""), self.sampling.stop


@dataclass
class Generation:
    """A started generation: the resolved model and the chunks as they come."""

    request_id: str
    model: str
    chunks: AsyncIterator[Chunk]

    async def collect(self) -> Completed:
        """Drain the stream into the whole reply."""
        collector = Collector(self.model)
        async with contextlib.aclosing(self.chunks) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                if completed := collector.add(chunk):
                    return completed
        raise RuntimeError(f"generation {self.request_id} ended without a finish reason")
