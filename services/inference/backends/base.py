"""The one contract every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from services.common.errors import FailedPrecondition, InvalidArgument
from services.inference.api import Chunk
from services.inference.generation import GenerationRequest

if TYPE_CHECKING:
    from services.common.registry import ModelSpec


@dataclass
class BackendStats:
    """Counters a backend keeps about its own work (read by health checks, metrics and tests)."""

    running: int = 0  # generations executing now
    tokens_generated: int = 0  # since load, cancelled generations included


class BackendOptions(BaseModel):
    """A backend's registry `options`, typed: an unknown key or a wrong type stops startup
    (check_options in backends/__init__.py), naming the model and the key."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Backend(ABC):
    """Runs one model.

    `generate_stream` yields text chunks; the last one carries finish_reason
    and usage. Closing the iterator early (the client went away) must stop
    generation: that is how cancellation reaches a backend.
    """

    # Optional capabilities, declared rather than discovered by hasattr().
    supports_images: ClassVar[bool] = False  # see accepts_images
    supports_adapters: ClassVar[bool] = False
    supports_adapter_scale: ClassVar[bool] = False  # GenerationRequest.adapter_scale other than 1.0
    # Whether a slot's settings change what the backend talks to (REST: a URL per slot).
    slot_specific: ClassVar[bool] = False
    # Whether generate_stream honours GenerationRequest.response_format (JSON constrained decoding).
    supports_structured_output: ClassVar[bool] = False
    # Whether it can hold JSON between literal text (ResponseFormat.frame), which tool
    # syntaxes such as <tool_call>...</tool_call> need; without it tools use the generic syntax.
    supports_framed_output: ClassVar[bool] = False
    # Whether it can report each generated token's log-probability (GenerationRequest.logprobs).
    supports_logprobs: ClassVar[bool] = False
    # Whether it can also score the prompt (GenerationRequest.prompt_logprobs).
    supports_prompt_logprobs: ClassVar[bool] = False

    # The model of its registry options; each backend declares its own.
    Options: ClassVar[type[BackendOptions]] = BackendOptions

    @classmethod
    def check_schema(cls, schema: dict[str, Any]) -> None:
        """Raise InvalidArgument naming a schema feature this backend cannot enforce."""

    @classmethod
    def accepts_images(cls, spec: ModelSpec) -> bool:
        """Whether `spec`'s model reads images (a backend may leave it to the model's options)."""
        return cls.supports_images

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.stats = BackendStats()
        self.options: Any = self.Options.model_validate(spec.options)  # checked at startup already

    @abstractmethod
    async def load(self) -> None:
        """Load the model and warm it up. Called once, before any generation."""

    async def unload(self) -> None:
        """Release the model's memory."""

    @abstractmethod
    def generate_stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Generate for `request`, chunk by chunk."""

    async def embed(self, texts: tuple[str, ...]) -> tuple[list[list[float]], int]:
        """One vector per text, and the tokens read: managed servers that serve embeddings."""
        raise FailedPrecondition(
            f"Model '{self.spec.name}' ({self.spec.backend} backend) does not serve embeddings.", param="model"
        )

    async def count_tokens(self, request: GenerationRequest) -> int:
        """The tokens `request`'s prompt takes in this model's tokenizer (backends that have one)."""
        raise FailedPrecondition(
            f"Model '{self.spec.name}' ({self.spec.backend} backend) cannot count tokens.", param="model"
        )

    async def load_adapter(self, name: str, path: Path) -> None:
        """Attach a LoRA adapter so that requests naming `name` use it (supports_adapters only)."""
        raise FailedPrecondition(f"The {self.spec.backend} backend cannot apply LoRA adapters.", param="adapter")

    @property
    def parallel_slots(self) -> int:
        """Requests it runs at once (batching backends: their n_parallel); the model queue adds its bound."""
        return 1

    @property
    def adapters(self) -> frozenset[str]:
        """Adapters attached now."""
        return frozenset()

    async def abort(self, request_id: str) -> None:
        """Stop a running generation from outside its stream. Unknown ids are ignored."""

    async def check_health(self) -> None:
        """Raise if the backend cannot serve."""

    def generation_budget(self, prompt_tokens: int, context: int, max_tokens: int | None, param: str) -> int:
        """How many tokens may be generated: `max_tokens`, capped by what the context window leaves.
        A prompt that fills the window is the caller's error (`param` names the field)."""
        if prompt_tokens >= context:
            raise InvalidArgument(
                f"The prompt is {prompt_tokens} tokens; model '{self.spec.name}' has a context window of {context}.",
                param=param,
            )
        room = context - prompt_tokens
        return min(max_tokens or room, room)
