"""Every store's pool outlives PostgreSQL dropping its connections (a restart, a failover)."""

from __future__ import annotations

import asyncpg

from services.common.postgres import POOL_SIZE, open_pool


async def test_statements_survive_postgresql_dropping_every_pooled_connection(fresh_database_url: str) -> None:
    pool = await open_pool(fresh_database_url)
    admin = await asyncpg.connect(fresh_database_url)
    try:
        # Every connection the pool may hold is opened, then cut as a restart would.
        async with pool.acquire() as first, pool.acquire() as second:
            assert await first.fetchval("SELECT 1") == await second.fetchval("SELECT 1") == 1
        cut = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert 2 <= cut <= POOL_SIZE
        for _ in range(POOL_SIZE + 1):  # each stale connection is met once, and replaced
            assert await pool.fetchval("SELECT 41 + 1") == 42
    finally:
        await admin.close()
        await pool.close()
