"""The settings store: key/value settings that override the environment (see `routing`).

PostgreSQL in deployments; in memory when the service runs without a database,
so that the inference service still starts on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import asyncpg

from services.common.postgres import migrate, open_pool

MIGRATIONS = (
    "CREATE TABLE settings (key text PRIMARY KEY, value text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())",
)


@dataclass(frozen=True)
class StoredSetting:
    key: str
    value: str
    updated_at: datetime


class SettingsStore(Protocol):
    async def all(self) -> dict[str, StoredSetting]: ...

    async def put(self, key: str, value: str) -> StoredSetting: ...

    async def delete(self, key: str) -> None: ...

    async def close(self) -> None: ...


class PostgresSettingsStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str) -> PostgresSettingsStore:
        pool = await open_pool(url)
        await migrate(pool, "inference.settings", MIGRATIONS)
        return cls(pool)

    async def all(self) -> dict[str, StoredSetting]:
        rows = await self._pool.fetch("SELECT key, value, updated_at FROM settings")
        return {row["key"]: StoredSetting(row["key"], row["value"], row["updated_at"]) for row in rows}

    async def put(self, key: str, value: str) -> StoredSetting:
        row = await self._pool.fetchrow(
            "INSERT INTO settings (key, value) VALUES ($1, $2)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now()"
            " RETURNING key, value, updated_at",
            key,
            value,
        )
        return StoredSetting(row["key"], row["value"], row["updated_at"])

    async def delete(self, key: str) -> None:
        await self._pool.execute("DELETE FROM settings WHERE key = $1", key)

    async def close(self) -> None:
        await self._pool.close()


class MemorySettingsStore:
    """For a service started without a database: settings last until it stops."""

    def __init__(self) -> None:
        self._settings: dict[str, StoredSetting] = {}

    async def all(self) -> dict[str, StoredSetting]:
        return dict(self._settings)

    async def put(self, key: str, value: str) -> StoredSetting:
        self._settings[key] = StoredSetting(key, value, datetime.now(UTC))
        return self._settings[key]

    async def delete(self, key: str) -> None:
        self._settings.pop(key, None)

    async def close(self) -> None:
        pass
