"""/v1/completions: the request, its mapping to the inference contract, the whole response and
the stream's chunks."""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from pydantic import BaseModel, Field

from services.common.errors import InvalidArgument
from services.gateway.protocol.common import (
    FINISH_NAMES,
    TOP_LOGPROBS_FIELD,
    ChoiceChunks,
    ChoiceOut,
    FinishName,
    ReplyOut,
    ResponseFormatIn,
    SamplingFields,
    UsageOut,
)
from services.inference.api import Completed, CompletionRequest, ResponseFormat, StreamEvent, TokenLogprob


class CompletionRequestIn(SamplingFields):
    model: str = Field(min_length=1)
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    response_format: ResponseFormatIn | None = None
    logprobs: int | None = TOP_LOGPROBS_FIELD  # each token's log-probability with this many alternatives

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
                logprobs=self.logprobs,
                prompt_logprobs=self.echo and self.logprobs is not None,  # the echoed prompt is scored too
            )
            for p in prompts
            for _ in range(self.n)
        ]


class CompletionLogprobsOut(BaseModel):
    """The legacy completions shape: parallel lists, one entry per generated token."""

    tokens: list[str]
    token_logprobs: list[float | None]  # None: the prompt's first token, which nothing before it scores
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]  # where each token starts in the choice's text


def completion_logprobs(
    logprobs: tuple[TokenLogprob, ...], offset: int, prompt: tuple[TokenLogprob, ...] = ()
) -> CompletionLogprobsOut:
    """`offset`: where the first token starts (after what came before it in the choice's text);
    `prompt`: the scored prompt (echo), which then comes first, from offset 0."""
    entries = prompt + logprobs
    offsets = []
    offset = 0 if prompt else offset
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    unscored = 1 if prompt else 0
    return CompletionLogprobsOut(
        tokens=[t.token for t in entries],
        token_logprobs=[None] * unscored + [t.logprob for t in entries[unscored:]],
        top_logprobs=[None] * unscored + [{a.token: a.logprob for a in t.top} for t in entries[unscored:]],
        text_offset=offsets,
    )


class CompletionChoice(ChoiceOut):
    text: str
    logprobs: CompletionLogprobsOut | None = None


class Completion(ReplyOut):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


def completion_body(
    completion_id: str, model: str, replies: list[Completed], echoes: list[str], usage: UsageOut, logprobs: bool
) -> Completion:
    """`echoes`: what each choice's text starts with (its prompt, with `echo`)."""
    return Completion(
        id=completion_id,
        model=model,
        choices=[
            CompletionChoice(
                index=index,
                text=echo + reply.text,
                finish_reason=reply.finish_reason.value,
                logprobs=completion_logprobs(reply.logprobs, len(echo), reply.prompt_logprobs) if logprobs else None,
            )
            for index, (echo, reply) in enumerate(zip(echoes, replies, strict=True))
        ],
        usage=usage,
    )


class CompletionChunkChoice(TypedDict):
    index: int
    text: str
    finish_reason: FinishName | None
    logprobs: dict[str, Any] | None


class CompletionChunks(ChoiceChunks[CompletionChunkChoice]):
    """The stream: each choice's echoed prompt first (`echo`, scored with logprobs), then its text
    with logprobs whose offsets continue across chunks, and its finish reason."""

    object = "text_completion"

    def __init__(self, completion_id: str, choices_per_prompt: int, include_usage: bool, echoes: list[str]) -> None:
        super().__init__(completion_id, choices_per_prompt, include_usage)
        self.echoes = echoes
        self.offsets = [len(echo) for echo in echoes]  # where each choice's next token starts in its text
        self.echoed: set[int] = set()

    def chunks(self, event: StreamEvent, first: bool) -> list[list[CompletionChunkChoice]]:
        chunk, index = event.chunk, event.index
        out = []
        if self.echoes[index] and index not in self.echoed:  # each prompt before its choice's text
            self.echoed.add(index)
            prompt = chunk.prompt_logprobs  # the scored prompt (echo with logprobs)
            scored = completion_logprobs((), 0, prompt).model_dump() if prompt else None
            out.append([_choice(index, self.echoes[index], None, scored)])
        if chunk.text or chunk.finish_reason:
            logprobs = None
            if chunk.logprobs:
                logprobs = completion_logprobs(chunk.logprobs, self.offsets[index]).model_dump()
                self.offsets[index] += sum(len(t.token) for t in chunk.logprobs)
            finish = FINISH_NAMES[chunk.finish_reason] if chunk.finish_reason else None
            out.append([_choice(index, chunk.text, finish, logprobs)])
        return out


def _choice(
    index: int, text: str, finish_reason: FinishName | None, logprobs: dict[str, Any] | None = None
) -> CompletionChunkChoice:
    return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": logprobs}
