"""The one door: every way into the mesh is admitted by `admit`, with the same rules in the
same order.

A door is an HTTP endpoint of an API family, a line of a batch, or an async job type. `admit`
checks, in order:
1. identity: the `Caller` (resolved from the credential by `auth.Authenticator`);
2. scope: every scope the door needs (a batch line needs the batch's and its endpoint's);
3. model allow-list: every model the request names;
4. quotas and rate limits: counted now for a request answered now; for batch lines and jobs,
   checked now and counted by the scheduler when they run (their limits travel with the job);
5. input hygiene: every string valid UTF-8 (JSON allows lone surrogates, protobuf and
   PostgreSQL do not), no NUL, names bounded.
Errors are `MeshError`s, rendered in the door's family's shape by `errors.py`.

`DOORS` lists every door; tests/services/gateway/test_admission.py runs every rule through
every door, and fails when a door is added without its row or a model endpoint without a door.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pydantic import BaseModel

from services.common.errors import InvalidArgument, quote
from services.common.rate_limits import RateLimits
from services.gateway.auth import Caller

MAX_NAME_CHARS = 256  # a model, adapter or node name
MAX_DEPTH = 64  # nesting of a body's values (JSON schemas, metadata)


class Family(enum.StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"


class Counted(enum.StrEnum):
    NOW = "now"  # a request answered now counts when admitted
    WHEN_RUN = "when_run"  # a batch line or job: checked now, counted by the scheduler as it runs


@dataclass(frozen=True)
class Door:
    name: str
    scopes: tuple[str, ...]
    path: str  # the HTTP path it comes in by
    family: Family = Family.OPENAI
    counted: Counted = Counted.NOW


def _doors(*doors: Door) -> dict[str, Door]:
    return {door.name: door for door in doors}


DOORS = _doors(
    Door("chat", ("chat",), "/v1/chat/completions"),
    Door("completions", ("chat",), "/v1/completions"),
    Door("embeddings", ("embeddings",), "/v1/embeddings"),
    Door("rerank", ("embeddings",), "/v1/rerank"),
    Door("responses", ("chat",), "/v1/responses"),
    Door("messages", ("chat",), "/v1/messages", Family.ANTHROPIC),
    Door("count_tokens", ("chat",), "/v1/messages/count_tokens", Family.ANTHROPIC),
    Door("batch", ("jobs",), "/v1/batches"),
    Door("batch_line:/v1/chat/completions", ("jobs", "chat"), "/v1/batches", counted=Counted.WHEN_RUN),
    Door("batch_line:/v1/completions", ("jobs", "chat"), "/v1/batches", counted=Counted.WHEN_RUN),
    Door("batch_line:/v1/embeddings", ("jobs", "embeddings"), "/v1/batches", counted=Counted.WHEN_RUN),
    Door("job:chat", ("jobs", "chat"), "/internal/queue/enqueue", counted=Counted.WHEN_RUN),
    Door("job:vision", ("jobs", "chat"), "/internal/queue/enqueue", counted=Counted.WHEN_RUN),
    Door("job:embed", ("jobs", "embeddings"), "/internal/queue/enqueue", counted=Counted.WHEN_RUN),
    Door("job:adapter_train", ("jobs",), "/internal/queue/enqueue", counted=Counted.WHEN_RUN),
)


@dataclass
class Admission:
    """One request at one door, as the rules see it."""

    caller: Caller
    door: Door
    body: object
    models: tuple[str, ...]
    limits: RateLimits = RateLimits()


def _scope(request: Admission) -> None:
    for scope in request.door.scopes:
        request.caller.check_scope(scope)


def _allow_list(request: Admission) -> None:
    for model in request.models:
        request.caller.require_model(model)


def _rate(request: Admission) -> None:
    request.caller.check_rate(count=request.door.counted is Counted.NOW)
    if request.caller.key is not None:
        request.limits = request.caller.key.rate_limits


def _bounds(request: Admission) -> None:
    for model in request.models:
        if len(model) > MAX_NAME_CHARS:
            raise InvalidArgument(
                f"A model name has at most {MAX_NAME_CHARS} characters; got {len(model)}.",
                param="model",
                reason="NAME_TOO_LONG",
            )


def _text(request: Admission) -> None:
    check_text(request.body)


# The rules, in the order they are checked (identity came first: the Caller is who called).
RULES: dict[str, Callable[[Admission], None]] = {
    "scope": _scope,
    "allow_list": _allow_list,
    "rate": _rate,
    "bounds": _bounds,
    "text": _text,
}


def admit(caller: Caller, door: Door, body: object, models: Iterable[str] = ()) -> RateLimits:
    """Admit `body` through `door` for `caller`, or raise the first rule it breaks. Returns the
    key's rate limits, which a door counted when run hands on to the scheduler."""
    request = Admission(caller, door, body, tuple(model for model in models if model))
    for rule in RULES.values():
        rule(request)
    return request.limits


def check_text(value: object, where: str = "") -> None:
    """Every string in `value` (a pydantic model, dict, list or str) is text the mesh can carry:
    valid UTF-8 and without NUL. `where` names the field in the error (`messages.0.content`)."""
    stack: list[tuple[object, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            _check_string(item, path)
        elif depth > MAX_DEPTH:
            raise InvalidArgument(f"'{path}' nests deeper than {MAX_DEPTH} levels.", param=path or None)
        elif isinstance(item, BaseModel):
            stack.extend((v, _join(path, k), depth + 1) for k, v in item.__dict__.items())
        elif isinstance(item, dict):
            for k, v in item.items():
                key_path = _join(path, quote(k, 32) if isinstance(k, str) else str(k))
                if isinstance(k, str):
                    _check_string(k, key_path)
                stack.append((v, key_path, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((v, _join(path, str(i)), depth + 1) for i, v in enumerate(item))


def _check_string(text: str, path: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(
                f"'{path}' is not valid text: it holds a lone UTF-16 surrogate, which JSON allows and UTF-8 does not.",
                param=path or None,
                reason="INVALID_TEXT",
            ) from None
    if "\x00" in text:
        raise InvalidArgument(f"'{path}' holds a NUL character (U+0000).", param=path or None, reason="INVALID_TEXT")


def _join(path: str, part: str) -> str:
    return f"{path}.{part}" if path else part
