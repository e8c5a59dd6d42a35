"""Stored responses: the conversation a /v1/responses call ended with, so that a later call can
continue it by `previous_response_id` without sending it again, and the response object itself,
which `GET /v1/responses/{id}` answers again.

A row belongs to the caller that created it (another key gets 404, as for jobs) and is kept
for the retention period; expired rows are deleted a bounded batch at a time, on writes.
The conversation is kept as the inference contract's own ChatRequest message (one mapping).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from llmmesh.inference.v1 import inference_service_pb2 as inference_pb
from services.common.errors import NotFound
from services.common.postgres import migrate
from services.inference.api import ChatMessage, ChatRequest

MIGRATIONS = [
    """
    CREATE TABLE stored_responses (
        response_id   text PRIMARY KEY,
        owner         text NOT NULL,
        conversation  bytea NOT NULL,  -- llmmesh.inference.v1.ChatRequest: the messages so far
        created_at    timestamptz NOT NULL DEFAULT now(),
        expires_at    timestamptz NOT NULL
    );
    CREATE INDEX stored_responses_expiry ON stored_responses (expires_at);
    """,
    # The response object as it was answered (JSON); rows stored before it have none.
    "ALTER TABLE stored_responses ADD COLUMN response json;",
]
MAX_CONVERSATION_BYTES = 4 * 1024 * 1024  # a longer conversation is answered but not stored
PURGE_BATCH = 100


class ResponseStore:
    def __init__(self, pool: asyncpg.Pool, retention_seconds: int) -> None:
        self._pool = pool
        self._retention = retention_seconds

    async def migrate(self) -> None:
        await migrate(self._pool, "gateway-responses", MIGRATIONS)

    async def save(self, response_id: str, owner: str, messages: tuple[ChatMessage, ...], response: str) -> bool:
        """Keep the conversation and the response object (JSON); False when too long to keep."""
        data = ChatRequest(model="", messages=messages).to_pb().SerializeToString()
        if len(data) + len(response) > MAX_CONVERSATION_BYTES:
            return False
        await self._pool.execute(  # one round trip: the insert, and a bounded purge of expired rows
            "WITH purged AS (DELETE FROM stored_responses WHERE response_id IN"
            " (SELECT response_id FROM stored_responses WHERE expires_at < now() LIMIT $5))"
            " INSERT INTO stored_responses (response_id, owner, conversation, expires_at, response)"
            " VALUES ($1, $2, $3, now() + make_interval(secs => $4), $6::json)",
            response_id,
            owner,
            data,
            float(self._retention),
            PURGE_BATCH,
            response,
        )
        return True

    async def response(self, response_id: str, owner: str) -> str:
        """The stored response object (JSON); NotFound as for `conversation`."""
        statement = "SELECT response FROM stored_responses WHERE {mine} AND response IS NOT NULL"
        return str(await self._mine(statement, response_id, owner, param=None))

    async def delete(self, response_id: str, owner: str) -> None:
        """Forget a stored response: it can no longer be read or continued."""
        await self._mine("DELETE FROM stored_responses WHERE {mine} RETURNING 1", response_id, owner, param=None)

    async def conversation(
        self, response_id: str, owner: str, param: str | None = "previous_response_id"
    ) -> tuple[ChatMessage, ...]:
        """The messages a stored response ended with, its answer last; NotFound for another
        owner's or an expired one, naming `param`."""
        statement = "SELECT conversation FROM stored_responses WHERE {mine}"
        data = await self._mine(statement, response_id, owner, param=param)
        return ChatRequest.from_pb(inference_pb.ChatRequest.FromString(data)).messages

    async def _mine(self, statement: str, response_id: str, owner: str, param: str | None) -> Any:
        """`statement`'s one value on the caller's live row (`{mine}`); NotFound when there is none."""
        mine = "response_id = $1 AND (owner = $2 OR $2 = '') AND expires_at > now()"
        found = await self._pool.fetchval(statement.format(mine=mine), response_id, owner)
        if found is None:
            raise NotFound(
                f"No stored response '{response_id}' (never stored, expired, deleted, or not yours).",
                param=param,
                reason="RESPONSE_NOT_FOUND",
            )
        return found
