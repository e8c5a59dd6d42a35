"""App API keys in PostgreSQL.

A key is shown once, at creation; the table keeps only HMAC-SHA256(server secret,
key), so a leaked table reveals no key, and lookups are by that digest (a
parameterized query, compared again in constant time).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.common.errors import InvalidArgument, NotFound
from services.common.postgres import migrate
from services.common.rate_limits import RateLimits

KEY_PREFIX = "llmm_"
SCOPES = ("chat", "embeddings", "jobs", "admin")
CACHE_SECONDS = 10.0  # how long a looked-up key is trusted without asking PostgreSQL again
CACHE_MAX_ENTRIES = 10_000

MIGRATIONS = [
    """
    CREATE TABLE api_keys (
        key_id        uuid PRIMARY KEY,
        name          text NOT NULL,
        key_digest    text NOT NULL UNIQUE,
        key_hint      text NOT NULL,
        scopes        text[] NOT NULL,
        models        text[],
        rpm_limit     integer,
        tpm_limit     integer,
        stream_limit  integer,
        created_at    timestamptz NOT NULL DEFAULT now(),
        revoked_at    timestamptz
    );
    -- Requests and tokens per key and minute.
    CREATE TABLE api_key_usage (
        key_id            uuid NOT NULL REFERENCES api_keys ON DELETE CASCADE,
        minute            timestamptz NOT NULL,
        requests          bigint NOT NULL DEFAULT 0,
        prompt_tokens     bigint NOT NULL DEFAULT 0,
        completion_tokens bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (key_id, minute)
    );
    """,
    # What a key may ask beyond request rates (Quotas); {}: the services' defaults.
    "ALTER TABLE api_keys ADD COLUMN quotas jsonb NOT NULL DEFAULT '{}'",
]


@dataclass(frozen=True)
class Quotas:
    """What a key may ask of the mesh beyond request rates; None: the service's default, which
    is safe (LLMMESH_GATEWAY_MAX_JOB_PRIORITY, LLMMESH_TRAINER_MAX_*). The superuser sets them
    per key, higher or lower."""

    max_priority: int | None = None
    max_training_examples: int | None = None
    max_training_epochs: int | None = None
    max_training_steps: int | None = None
    max_training_seconds: float | None = None

    def to_json(self) -> dict[str, int | float]:
        return {name: value for name, value in dataclasses.asdict(self).items() if value is not None}

    @classmethod
    def from_json(cls, text: str) -> Quotas:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in json.loads(text).items() if name in known})


@dataclass(frozen=True)
class ApiKey:
    key_id: uuid.UUID
    name: str
    key_hint: str
    scopes: tuple[str, ...]
    models: tuple[str, ...] | None  # None: every model
    rpm_limit: int | None
    tpm_limit: int | None
    stream_limit: int | None
    created_at: datetime
    revoked_at: datetime | None
    quotas: Quotas = Quotas()

    @property
    def rate_limits(self) -> RateLimits:
        return RateLimits(self.rpm_limit, self.tpm_limit)

    def body(self) -> dict[str, object]:
        return {
            "id": str(self.key_id),
            "object": "api_key",
            "name": self.name,
            "hint": self.key_hint,
            "scopes": list(self.scopes),
            "models": list(self.models) if self.models is not None else None,
            "limits": {"rpm": self.rpm_limit, "tpm": self.tpm_limit, "concurrent_streams": self.stream_limit},
            "quotas": self.quotas.to_json(),
            "created_at": int(self.created_at.timestamp()),
            "revoked_at": int(self.revoked_at.timestamp()) if self.revoked_at else None,
        }


@dataclass(frozen=True)
class NewKey:
    name: str
    scopes: tuple[str, ...]
    models: tuple[str, ...] | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    stream_limit: int | None = None
    quotas: Quotas = Quotas()

    def validate(self) -> NewKey:
        if not self.name.strip() or len(self.name) > 200:
            raise InvalidArgument("'name' must be 1-200 characters.", param="name")
        unknown = sorted(set(self.scopes) - set(SCOPES))
        if unknown or not self.scopes:
            raise InvalidArgument(
                f"'scopes' must be some of {', '.join(SCOPES)}; got {unknown or 'none'}.", param="scopes"
            )
        for field in ("rpm_limit", "tpm_limit", "stream_limit"):
            value = getattr(self, field)
            if value is not None and value < 1:
                raise InvalidArgument(f"'{field}' must be at least 1.", param=field)
        return self


def _key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        key_id=row["key_id"],
        name=row["name"],
        key_hint=row["key_hint"],
        scopes=tuple(row["scopes"]),
        models=tuple(row["models"]) if row["models"] is not None else None,
        rpm_limit=row["rpm_limit"],
        tpm_limit=row["tpm_limit"],
        stream_limit=row["stream_limit"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        quotas=Quotas.from_json(row["quotas"]),
    )


class ApiKeyStore:
    def __init__(self, pool: asyncpg.Pool, secret: bytes) -> None:
        self.pool = pool
        self._secret = secret
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    async def migrate(self) -> None:
        await migrate(self.pool, "gateway-api-keys", MIGRATIONS)

    def digest(self, key: str) -> str:
        return hmac.new(self._secret, key.encode(), hashlib.sha256).hexdigest()

    async def create(self, new: NewKey) -> tuple[ApiKey, str]:
        """The stored key and the key itself, which is never available again."""
        new.validate()
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = await self.pool.fetchrow(
            "INSERT INTO api_keys (key_id, name, key_digest, key_hint, scopes, models, rpm_limit, tpm_limit,"
            " stream_limit, quotas) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING *",
            uuid.uuid4(),
            new.name.strip(),
            self.digest(key),
            f"{key[:9]}...{key[-4:]}",
            list(dict.fromkeys(new.scopes)),
            list(new.models) if new.models is not None else None,
            new.rpm_limit,
            new.tpm_limit,
            new.stream_limit,
            json.dumps(new.quotas.to_json()),
        )
        return _key(row), key

    async def list(self) -> list[ApiKey]:
        return [_key(row) for row in await self.pool.fetch("SELECT * FROM api_keys ORDER BY created_at")]

    async def revoke(self, key_id: str) -> ApiKey:
        try:
            parsed = uuid.UUID(key_id)
        except ValueError:
            raise NotFound(f"No API key '{key_id}'.", param="key_id", reason="KEY_NOT_FOUND") from None
        row = await self.pool.fetchrow(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1 RETURNING *", parsed
        )
        if row is None:
            raise NotFound(f"No API key '{key_id}'.", param="key_id", reason="KEY_NOT_FOUND")
        self._cache.clear()
        return _key(row)

    async def find(self, presented: str) -> ApiKey | None:
        """The live key `presented` is, or None (unknown or revoked)."""
        digest = self.digest(presented)
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        row = await self.pool.fetchrow("SELECT * FROM api_keys WHERE key_digest = $1", digest)
        found = None
        if row is not None and hmac.compare_digest(row["key_digest"], digest) and row["revoked_at"] is None:
            found = _key(row)
        if len(self._cache) >= CACHE_MAX_ENTRIES:  # random bearer tokens must not grow it without bound
            now = time.monotonic()
            self._cache = {d: entry for d, entry in self._cache.items() if entry[0] > now}
            while len(self._cache) >= CACHE_MAX_ENTRIES:
                self._cache.pop(next(iter(self._cache)))  # the oldest
        self._cache[digest] = (time.monotonic() + CACHE_SECONDS, found)
        return found

    async def record_usage(self, key_id: uuid.UUID, requests: int, prompt_tokens: int, completion_tokens: int) -> None:
        await self.pool.execute(
            "INSERT INTO api_key_usage (key_id, minute, requests, prompt_tokens, completion_tokens)"
            " VALUES ($1, date_trunc('minute', now()), $2, $3, $4) ON CONFLICT (key_id, minute) DO UPDATE SET"
            " requests = api_key_usage.requests + $2, prompt_tokens = api_key_usage.prompt_tokens + $3,"
            " completion_tokens = api_key_usage.completion_tokens + $4",
            key_id,
            requests,
            prompt_tokens,
            completion_tokens,
        )

    async def usage(self, key_id: uuid.UUID) -> dict[str, int | None]:
        """Requests and tokens so far, and the minute of the last use (Unix seconds; None: never)."""
        row = await self.pool.fetchrow(
            "SELECT coalesce(sum(requests), 0)::bigint AS requests,"
            " coalesce(sum(prompt_tokens), 0)::bigint AS prompt_tokens,"
            " coalesce(sum(completion_tokens), 0)::bigint AS completion_tokens,"
            " extract(epoch FROM max(minute))::bigint AS last_used_at"
            " FROM api_key_usage WHERE key_id = $1",
            key_id,
        )
        return dict(row)
