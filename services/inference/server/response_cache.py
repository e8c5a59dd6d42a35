"""The response cache: whole replies to deterministic requests, replayed without a model.

Opt-in per model (registry `response_cache: true`) or per request (`cache`). Only
requests whose output cannot vary are cached: temperature 0, or a fixed seed. The key
is the model plus the request as the backend would receive it (rendered messages,
sampling with the model's defaults applied, output constraints), so equivalent
requests share an entry. An in-memory LRU with a TTL and a size bound; with a
directory configured, entries also persist in SQLite across restarts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import sqlite3
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from prometheus_client import Counter

from llmmesh.inference.v1 import inference_service_pb2 as pb
from services.common.metrics import PREFIX
from services.common.registry import ModelSpec
from services.inference.api import Chunk, ToolCall, ToolCallDelta
from services.inference.generation import GenerationRequest
from services.inference.server.tools import new_call_id

HITS = Counter(f"{PREFIX}response_cache_hits", "Requests served from the response cache.", ("model_name",))
MISSES = Counter(f"{PREFIX}response_cache_misses", "Cacheable requests that were generated.", ("model_name",))


def cacheable(spec: ModelSpec, opted_in: bool | None, request: GenerationRequest) -> bool:
    wanted = opted_in if opted_in is not None else spec.response_cache
    sampling = request.sampling
    return wanted and (sampling.temperature == 0 or sampling.seed is not None)


def cache_key(spec: ModelSpec, request: GenerationRequest, scope: str = "") -> str:
    """The entry of `request` within `scope` (its caller): one tenant never reads another's replies."""
    normalized = dataclasses.replace(request, request_id="")
    return hashlib.sha256(repr((scope, spec.name, spec.backend, spec.path, normalized)).encode()).hexdigest()


@dataclass
class CacheStats:
    entries: int
    max_entries: int
    ttl_seconds: int
    hits: int
    misses: int
    persistent: bool


class ResponseCache:
    def __init__(self, max_entries: int, ttl_seconds: int, directory: Path | None = None) -> None:
        self.max_entries = max_entries
        self.ttl_seconds = ttl_seconds
        self._entries: OrderedDict[str, tuple[float, list[Chunk]]] = OrderedDict()
        self.hits = self.misses = 0
        self._db: sqlite3.Connection | None = None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(directory / "response-cache.sqlite", check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, stored REAL, chunks BLOB)")
            self._db.execute("DELETE FROM replies WHERE stored < ?", (time.time() - ttl_seconds,))
            self._db.commit()

    def stats(self) -> CacheStats:
        return CacheStats(
            len(self._entries), self.max_entries, self.ttl_seconds, self.hits, self.misses, self._db is not None
        )

    async def lookup(self, key: str, model: str) -> list[Chunk] | None:
        entry = self._entries.get(key)
        if entry is None and self._db is not None:
            entry = await asyncio.to_thread(self._read, key)
        if entry is None or entry[0] < time.time() - self.ttl_seconds:
            return None
        self._remember(key, entry)
        self.hits += 1
        HITS.labels(model).inc()
        return entry[1]

    async def record(self, key: str, model: str, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        """Pass `chunks` through, and store them once the reply finished (not when it broke off)."""
        self.misses += 1
        MISSES.labels(model).inc()
        seen: list[Chunk] = []
        async for chunk in chunks:
            if chunk.wait_status is None:
                seen.append(chunk)
            if chunk.finish_reason is not None:  # stored before the last yield: readers stop at it
                entry = (time.time(), seen)
                self._remember(key, entry)
                if self._db is not None:
                    await asyncio.to_thread(self._write, key, entry)
            yield chunk

    def _remember(self, key: str, entry: tuple[float, list[Chunk]]) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def _read(self, key: str) -> tuple[float, list[Chunk]] | None:
        assert self._db is not None
        row = self._db.execute("SELECT stored, chunks FROM replies WHERE key = ?", (key,)).fetchone()
        return (row[0], [_chunk_from_json(c) for c in json.loads(row[1])]) if row else None

    def _write(self, key: str, entry: tuple[float, list[Chunk]]) -> None:
        assert self._db is not None
        chunks = json.dumps([_chunk_to_json(c) for c in entry[1]])
        self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?)", (key, entry[0], chunks))
        self._db.commit()


# On disk as the protobuf JSON of the stream messages (the one mapping of Chunk), never
# pickle: a file that could be tampered with must never run code when read.
def _chunk_to_json(chunk: Chunk) -> dict[str, Any]:
    return json_format.MessageToDict(chunk.to_pb(pb.ChatStreamResponse, request_id="", model=""))


def _chunk_from_json(data: dict[str, Any]) -> Chunk:
    return Chunk.from_pb(json_format.ParseDict(data, pb.ChatStreamResponse()))


async def replay(chunks: list[Chunk]) -> AsyncIterator[Chunk]:
    """A cached reply, with fresh tool-call ids (ids are unique per response)."""
    ids: dict[str, str] = {}

    def fresh(old: str) -> str:
        return ids.setdefault(old, new_call_id())

    for chunk in chunks:
        yield dataclasses.replace(
            chunk,
            tool_calls=tuple(ToolCall(fresh(c.id), c.name, c.arguments) for c in chunk.tool_calls),
            tool_call_deltas=tuple(
                ToolCallDelta(d.index, fresh(d.id), d.name, d.arguments) for d in chunk.tool_call_deltas
            ),
        )
