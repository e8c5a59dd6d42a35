"""/v1/completions: the request, its mapping to the inference contract, and the response."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.common.errors import InvalidArgument
from services.gateway.protocol.common import ChoiceOut, ReplyOut, ResponseFormatIn, SamplingFields, UsageOut
from services.inference.client import (
    CompletionRequest,
    FinishReason,
    ResponseFormat,
)


class CompletionRequestIn(SamplingFields):
    model: str = Field(min_length=1)
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    response_format: ResponseFormatIn | None = None

    def to_domain(self, max_choices: int) -> list[CompletionRequest]:
        """One inference request per prompt and choice, in OpenAI's choice order."""
        self.reject_unsupported(max_choices)
        if self.suffix:
            raise InvalidArgument("'suffix' is not supported yet.", param="suffix")
        if self.best_of not in (None, 1, self.n):
            raise InvalidArgument("'best_of' other than n is not supported.", param="best_of")
        raw = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        prompts = [p for p in raw if isinstance(p, str)]
        if not prompts or len(prompts) != len(raw):
            raise InvalidArgument(
                "'prompt' must be a string or a non-empty list of strings; token ids are not supported.", param="prompt"
            )
        if len(prompts) * self.n > max_choices:
            raise InvalidArgument(f"At most {max_choices} prompts times n are allowed per request.", param="prompt")
        sampling = self.sampling()
        response_format = self.response_format.to_domain() if self.response_format else ResponseFormat()
        return [
            CompletionRequest(
                model=self.model,
                prompt=p,
                sampling=sampling,
                response_format=response_format,
                cache=self.cache,
                adapter=self.adapter_settings.adapter_id if self.adapter_settings else "",
                adapter_scale=self.adapter_settings.scale if self.adapter_settings else 1.0,
            )
            for p in prompts
            for _ in range(self.n)
        ]


class CompletionChoice(ChoiceOut):
    text: str


class Completion(ReplyOut):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


def completion_body(
    completion_id: str, model: str, choices: list[tuple[str, FinishReason]], usage: UsageOut
) -> Completion:
    return Completion(
        id=completion_id,
        model=model,
        choices=[
            CompletionChoice(index=index, text=text, finish_reason=reason.value)
            for index, (text, reason) in enumerate(choices)
        ],
        usage=usage,
    )
