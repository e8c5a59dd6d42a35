"""PostgreSQL access shared by services: a pool, and migrations that run at startup."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import asyncpg

log = logging.getLogger(__name__)


async def open_pool(url: str) -> asyncpg.Pool:
    return await asyncpg.create_pool(url, min_size=1, max_size=4)


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
