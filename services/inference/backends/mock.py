"""A deterministic backend for tests: it echoes `[mock-text:<model>] <last user message>`, and
with option `images`, how many images the conversation holds (a stand-in for a vision model)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from pydantic import Field

from services.common.errors import Internal
from services.common.registry import ModelSpec
from services.inference.api import Chunk, FinishReason, Usage
from services.inference.backends.base import Backend, BackendOptions
from services.inference.generation import GenerationRequest


class MockOptions(BackendOptions):
    token_delay_seconds: float = Field(0.0, ge=0)
    fail_on: str = ""
    n_parallel: int = Field(1, ge=1, description="As a batching backend declares it: counted by the queue bound.")
    images: bool = Field(False, description="Accept images, as a vision model would, and count them.")


class MockBackend(Backend):
    """Streams the reply word by word; each word counts as one token.

    Option `token_delay_seconds` paces the words, so that tests can cancel a
    stream halfway through. Option `fail_on` makes a request whose text contains it
    fail with INTERNAL, as a backend that keeps crashing would.
    """

    Options = MockOptions
    options: MockOptions

    @property
    def parallel_slots(self) -> int:
        return self.options.n_parallel

    @classmethod
    def accepts_images(cls, spec: ModelSpec) -> bool:
        return bool(spec.options.get("images", False))

    async def load(self) -> None:
        self.token_delay = self.options.token_delay_seconds
        self.fail_on = self.options.fail_on or None

    async def count_tokens(self, request: GenerationRequest) -> int:
        """Words, as its usage counts them."""
        return (
            sum(len(m.content.split()) for m in request.messages)
            if request.is_chat
            else len((request.prompt or "").split())
        )

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        source = request.last_user_message if request.is_chat else request.prompt or ""
        if self.fail_on and self.fail_on in source:
            # A crash-like failure (INTERNAL): retried up to MaxDeliver, where an outage (UNAVAILABLE)
            # is retried until the job's TTL.
            raise Internal(f"mock backend failure (the request contains '{self.fail_on}')")
        prompt_words = await self.count_tokens(request)
        images = sum(len(message.images) for message in request.messages)
        seen = f" [{images} image{'s' if images > 1 else ''}]" if images else ""
        words = f"[mock-text:{self.spec.name}] {source}{seen}".split(" ")
        limit = request.sampling.max_tokens or len(words)
        emitted = 0
        self.stats.running += 1
        try:
            for index, word in enumerate(words[:limit]):
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                emitted += 1
                self.stats.tokens_generated += 1
                yield Chunk(text=word if index == 0 else f" {word}")
        finally:
            self.stats.running -= 1
        finish = FinishReason.LENGTH if limit < len(words) else FinishReason.STOP
        yield Chunk(text="", finish_reason=finish, usage=Usage(prompt_words, emitted))
