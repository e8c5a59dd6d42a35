"""Every store's pool outlives PostgreSQL dropping its connections (a restart, a failover)."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from pathlib import Path

import asyncpg
import pytest

from services.common.errors import Unavailable
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


class Proxy:
    """A hop between a pool and PostgreSQL's Unix socket that the test can cut and restore, as a
    database that goes down and comes back looks to its clients."""

    def __init__(self, upstream: Path, directory: Path) -> None:
        self.upstream, self.path = upstream, directory / upstream.name  # the same port, another directory
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        await self.server.wait_closed()
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_unix_connection(str(self.upstream))
        self.writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


async def test_a_database_out_of_reach_is_unavailable_and_the_pool_heals(
    fresh_database_url: str, tmp_path: Path
) -> None:
    """PostgreSQL down: every statement and transaction is Unavailable (503 with Retry-After at
    the gateway, never a 500); back up: the same pool works again, with no restart."""
    socket_dir = Path(urllib.parse.parse_qs(urllib.parse.urlsplit(fresh_database_url).query)["host"][0])
    upstream = next(p for p in socket_dir.glob(".s.PGSQL.*") if not p.name.endswith(".lock"))
    proxy = Proxy(upstream, tmp_path)
    await proxy.start()
    pool = await open_pool(fresh_database_url.replace(str(socket_dir), str(tmp_path)))
    try:
        assert await pool.fetchval("SELECT 1") == 1
        await proxy.cut()
        for attempt in (pool.fetchval("SELECT 1"), pool.execute("SELECT 1")):
            with pytest.raises(Unavailable) as away:
                await attempt
            assert away.value.reason == "DATABASE_UNAVAILABLE" and away.value.retry_after_seconds
        with pytest.raises(Unavailable):
            async with pool.acquire() as connection:
                await connection.fetchval("SELECT 1")
        await proxy.start()  # PostgreSQL is back where it was
        async with asyncio.timeout(30):
            while True:
                with contextlib.suppress(Unavailable):
                    if await pool.fetchval("SELECT 2") == 2:
                        break
                await asyncio.sleep(0.1)
    finally:
        await pool.close()
