"""Who is calling the gateway, what they may do, and how much.

- App API keys (`Authorization: Bearer llmm_...`) carry scopes (chat, embeddings, jobs,
  admin), an optional model allow-list and limits (requests and tokens per minute,
  concurrent streams).
- A superuser JWT (HS256 by default, RS256 optional; `exp`, `iss` and `aud` verified,
  `alg=none` refused) is required for key management, settings and model operations,
  always. An app key never grants those.
- Local development (`allow_anonymous`, loopback only) lets requests without a key use
  the app endpoints; it is explicit and logged.

Limits are counted in this gateway process (per replica).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt
from fastapi import Depends, Request

from services.common.errors import PermissionDenied, ResourceExhausted, Unauthenticated, quote
from services.common.rate_limits import Windows, retry_after
from services.gateway.analytics import MetricsHistory
from services.gateway.api_keys import KEY_PREFIX, ApiKey, ApiKeyStore
from services.gateway.config import GatewaySettings

log = logging.getLogger(__name__)


class Limiter:
    """This gateway's count of each key's requests, tokens and requests in flight."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.windows = Windows(clock)

    def admit(self, key: ApiKey, count: bool = True) -> None:
        """ResourceExhausted (429 with Retry-After) when the key is over a limit; else count one
        request, unless `count` is False (work that is counted when it runs: batches, jobs)."""
        over = self.windows.over(str(key.key_id), key.rate_limits)
        if over is not None:
            raise rate_limited(*over)
        if count:
            self.windows.count_request(str(key.key_id))

    def add_tokens(self, key: ApiKey, tokens: int) -> None:
        self.windows.add_tokens(str(key.key_id), tokens)

    def take_slot(self, key: ApiKey) -> Callable[[], None]:
        """Count one request in flight (streaming or not); the returned function ends it."""
        window = self.windows[str(key.key_id)]
        if key.stream_limit is not None and window.in_flight >= key.stream_limit:
            raise rate_limited("concurrent requests", key.stream_limit, 1)
        window.in_flight += 1

        def release() -> None:
            window.in_flight -= 1

        return release


def rate_limited(what: str, limit: int, retry_in: float) -> ResourceExhausted:
    return ResourceExhausted(
        f"Rate limit reached: {limit} {what} for this API key.",
        reason="RATE_LIMITED",
        retry_after_seconds=retry_after(retry_in),
    )


class Authenticator:
    def __init__(
        self, settings: GatewaySettings, keys: ApiKeyStore | None, history: MetricsHistory | None = None
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.history = history
        self.limiter = Limiter()
        self._tasks: set[asyncio.Task[None]] = set()

    def verify_jwt(self, token: str) -> dict[str, object]:
        key = self.settings.jwt_verification_key()
        if key is None:
            raise Unauthenticated(
                "No JWT secret is configured, so admin endpoints are closed (set LLMMESH_JWT_SECRET)."
            )
        try:
            claims: dict[str, object] = jwt.decode(
                token,
                key,
                algorithms=[self.settings.jwt_algorithm],  # never "none", never another family
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as error:
            raise Unauthenticated(f"Invalid token: {error}.", reason="INVALID_TOKEN") from None
        issued = claims.get("iat")
        lifetime = int(claims["exp"]) - (int(issued) if isinstance(issued, int | float) else int(time.time()))  # type: ignore[call-overload]
        if lifetime > self.settings.jwt_max_lifetime_seconds:
            raise Unauthenticated(
                f"Invalid token: it is valid for {lifetime} s; the most this gateway accepts is"
                f" {self.settings.jwt_max_lifetime_seconds} s (LLMMESH_JWT_MAX_LIFETIME_SECONDS).",
                reason="INVALID_TOKEN",
            )
        return claims

    def superuser(self, token: str) -> Caller:
        return Caller(self, kind="superuser", subject=f"admin:{self.verify_jwt(token)['sub']}")

    async def caller(self, request: Request) -> Caller:
        """Who is calling. Anonymous mode serves callers with no credential or an SDK's
        placeholder ("sk-no-key", "none"); a credential in this mesh's own key format that is
        unknown or revoked, or an empty `Bearer`, is a 401 in every mode: dropping to anonymous
        would drop a restricted key's limits."""
        credential = _bearer(request)
        if credential is None:
            if self.settings.allow_anonymous:
                return Caller(self, kind="anonymous", subject="anonymous")
            raise Unauthenticated("Missing API key: send 'Authorization: Bearer <key>'.", reason="MISSING_API_KEY")
        if not credential:
            raise Unauthenticated("Empty credential: send 'Authorization: Bearer <key>'.", reason="INVALID_API_KEY")
        if credential.count(".") == 2 and credential.startswith("eyJ"):
            return self.superuser(credential)
        found = await self.keys.find(credential) if self.keys is not None else None
        if found is None:
            if self.settings.allow_anonymous and not credential.startswith(KEY_PREFIX):
                return Caller(self, kind="anonymous", subject="anonymous")  # OpenAI SDKs always send some key
            raise Unauthenticated("Invalid or revoked API key.", reason="INVALID_API_KEY")
        return Caller(self, kind="key", subject=f"key:{found.key_id}", key=found)

    def record_usage(self, key: ApiKey, prompt_tokens: int, completion_tokens: int) -> None:
        """Count tokens for the limits now; write usage to PostgreSQL in the background."""
        self.limiter.add_tokens(key, prompt_tokens + completion_tokens)
        if self.keys is None:
            return
        task = asyncio.ensure_future(self.keys.record_usage(key.key_id, 1, prompt_tokens, completion_tokens))
        self._tasks.add(task)
        task.add_done_callback(self._usage_written)

    def _usage_written(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception():
            log.warning("recording API key usage failed: %s", task.exception())


@dataclass
class Caller:
    authenticator: Authenticator
    kind: str  # anonymous, key or superuser
    subject: str  # who owns what this caller creates (jobs)
    key: ApiKey | None = None

    @property
    def owner(self) -> str:
        """The tenant whose jobs, adapters and cache entries this caller sees: its own; ""
        (everyone's) for the superuser."""
        return "" if self.kind == "superuser" else self.subject

    def require_scope(self, scope: str, count: bool = True) -> Caller:
        """The caller, if it may use endpoints of scope `scope` and is within its rate limits
        (counting this request unless `count` is False)."""
        self.check_scope(scope)
        self.check_rate(count)
        return self

    def check_scope(self, scope: str) -> None:
        if self.key is not None and scope not in self.key.scopes:
            raise PermissionDenied(f"This API key lacks the '{scope}' scope.", reason="MISSING_SCOPE")

    def check_rate(self, count: bool = True) -> None:
        if self.key is not None:
            self.authenticator.limiter.admit(self.key, count)

    def require_model(self, model: str) -> None:
        name = model.rpartition("@")[0] or model  # `model@node` pins a node; keys list models
        if self.key is not None and self.key.models is not None and name not in self.key.models:
            raise PermissionDenied(
                f"This API key may not use the model '{quote(name)}'.", param="model", reason="MODEL_NOT_ALLOWED"
            )

    def used(self, prompt_tokens: int, completion_tokens: int) -> None:
        if self.authenticator.history is not None:
            self.authenticator.history.tokens(prompt_tokens, completion_tokens)
        if self.key is not None:
            self.authenticator.record_usage(self.key, prompt_tokens, completion_tokens)

    def request_slot(self) -> RequestSlot:
        """One of the key's concurrent requests, taken now: 429 before any byte is sent when
        none is left. `async with` gives it back when the handler returns, unless a stream
        response took it over (`RequestSlot.hand_over`)."""
        release = self.authenticator.limiter.take_slot(self.key) if self.key is not None else None
        return RequestSlot(release)


class RequestSlot:
    def __init__(self, release: Callable[[], None] | None) -> None:
        self._release = release

    def release(self) -> None:
        """Give the slot back; once, however many paths end the request."""
        release, self._release = self._release, None
        if release is not None:
            release()

    def hand_over(self) -> Callable[[], None]:
        """The release for a stream response to call when the stream ends."""
        release, self._release = self._release, None
        return RequestSlot(release).release  # still once only

    async def __aenter__(self) -> RequestSlot:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.release()


async def get_authenticator(request: Request) -> Authenticator:
    return request.app.state.authenticator


async def get_caller(request: Request, authenticator: Authenticator = Depends(get_authenticator)) -> Caller:
    caller = await authenticator.caller(request)
    request.state.owner = caller.subject  # whose request this was, for the recent-errors list
    return caller


def scope(name: str) -> Callable[..., object]:
    """A dependency: the caller, if it may use endpoints of scope `name` (and is within its limits)."""

    async def dependency(caller: Caller = Depends(get_caller)) -> Caller:
        return caller.require_scope(name)

    return dependency


async def superuser(request: Request, authenticator: Authenticator = Depends(get_authenticator)) -> Caller:
    """A dependency: the caller, if it presents a valid superuser JWT (app keys never qualify)."""
    credential = _bearer(request)
    if not credential:
        raise Unauthenticated("Admin endpoints need a superuser JWT: 'Authorization: Bearer <jwt>'.")
    if not credential.startswith("eyJ"):
        raise PermissionDenied("API keys never grant admin; use a superuser JWT.", reason="ADMIN_NEEDS_JWT")
    return authenticator.superuser(credential)


def _bearer(request: Request) -> str | None:
    """The credential of the request ("" when the header is there but empty), or None when it
    sends none. Anthropic's SDKs send the key as `x-api-key`, which counts the same."""
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, credential = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            return credential.strip()
    api_key = request.headers.get("x-api-key")
    return api_key.strip() if api_key is not None else None


def mint_jwt(settings: GatewaySettings, subject: str, ttl_seconds: int, private_key: str | None = None) -> str:
    """A superuser JWT signed with the configured secret (HS256) or `private_key` (RS256)."""
    if ttl_seconds > settings.jwt_max_lifetime_seconds:
        raise SystemExit(
            f"A token for {ttl_seconds} s would be refused: the most is {settings.jwt_max_lifetime_seconds} s"
            " (LLMMESH_JWT_MAX_LIFETIME_SECONDS)."
        )
    now = int(time.time())
    claims = {
        "sub": subject,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    key = private_key if settings.jwt_algorithm == "RS256" else settings.jwt_verification_key()
    if not key:
        raise SystemExit("No signing key: set LLMMESH_JWT_SECRET (HS256) or pass the RS256 private key.")
    return jwt.encode(claims, key, algorithm=settings.jwt_algorithm)
