"""PostgreSQL access shared by services: a pool, and migrations that run at startup."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from services.common.errors import Unavailable

log = logging.getLogger(__name__)


async def open_pool(url: str) -> RetryingPool:
    """The pool every store uses: a PostgreSQL restart costs none of its statements (RetryingPool)."""
    return RetryingPool(await asyncpg.create_pool(url, min_size=1, max_size=POOL_SIZE))


POOL_SIZE = 4
# A pooled connection PostgreSQL closed while it sat idle (a restart, a failover, an operator):
# the statement sent on it never ran, so it is safe to send again on another connection. The
# termination may also arrive while the pool resets a released connection, which leaves that
# connection refusing to start anything ("another operation is in progress"): nothing was sent.
_DROPPED = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.InternalClientError,
)


# PostgreSQL cannot be reached at all (down, restarting, refusing connections): the caller gets
# Unavailable (503 with Retry-After, gRPC UNAVAILABLE), never an internal error.
_UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.PostgresConnectionError,
    *_DROPPED,
)
RETRY_AFTER_SECONDS = 2


def database_unavailable(error: BaseException) -> Unavailable:
    return Unavailable(
        f"The database is unavailable ({type(error).__name__}); retry shortly.",
        reason="DATABASE_UNAVAILABLE",
        retry_after_seconds=RETRY_AFTER_SECONDS,
    )


class RetryingPool:
    """A pool whose statements survive connections that PostgreSQL dropped: each is retried on
    a fresh connection, as often as the pool may hold stale ones. A database that cannot be
    reached is `Unavailable`; anything else is the pool's."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    async def execute(self, *args: Any) -> Any:
        return await self._retried(self._pool.execute, *args)

    async def fetch(self, *args: Any) -> Any:
        return await self._retried(self._pool.fetch, *args)

    async def fetchrow(self, *args: Any) -> Any:
        return await self._retried(self._pool.fetchrow, *args)

    async def fetchval(self, *args: Any) -> Any:
        return await self._retried(self._pool.fetchval, *args)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for a transaction; the database out of reach, at the start or within, is
        Unavailable (the transaction did not commit)."""
        try:
            async with self._pool.acquire() as connection:
                yield connection
        except _UNREACHABLE as error:
            raise database_unavailable(error) from error

    async def _retried(self, method: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        try:
            for _ in range(POOL_SIZE):
                try:
                    return await method(*args)
                except _DROPPED as error:
                    log.warning("PostgreSQL dropped a pooled connection (%s); sending the statement again", error)
                    await self._pool.expire_connections()  # its siblings went with it: replace them all
            return await method(*args)
        except _UNREACHABLE as error:
            raise database_unavailable(error) from error


async def migrate(pool: asyncpg.Pool, component: str, migrations: Sequence[str]) -> None:
    """Apply `migrations` (SQL, in order, never edited once released) that `component` has not
    applied yet. An advisory lock makes concurrent starts of several replicas safe."""
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(hashtext('llmmesh-migrations'))")
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " component text NOT NULL, version integer NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (component, version))"
        )
        applied = await connection.fetchval(
            "SELECT coalesce(max(version), 0) FROM schema_migrations WHERE component = $1", component
        )
        for version, sql in enumerate(migrations, start=1):
            if version > applied:
                await connection.execute(sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (component, version) VALUES ($1, $2)", component, version
                )
                log.info("applied %s migration %d", component, version)
