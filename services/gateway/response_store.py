"""Stored responses: the conversation a /v1/responses call ended with, so that a later call can
continue it by `previous_response_id` without sending it again.

A row belongs to the caller that created it (another key gets 404, as for jobs) and is kept
for the retention period; expired rows are deleted a bounded batch at a time, on writes.
The conversation is kept as the inference contract's own ChatRequest message (one mapping).
"""

from __future__ import annotations

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
    """
]
MAX_CONVERSATION_BYTES = 4 * 1024 * 1024  # a longer conversation is answered but not stored
PURGE_BATCH = 100


class ResponseStore:
    def __init__(self, pool: asyncpg.Pool, retention_seconds: int) -> None:
        self._pool = pool
        self._retention = retention_seconds

    async def migrate(self) -> None:
        await migrate(self._pool, "gateway-responses", MIGRATIONS)

    async def save(self, response_id: str, owner: str, messages: tuple[ChatMessage, ...]) -> bool:
        """Keep the conversation; False when it is too long to keep."""
        data = ChatRequest(model="", messages=messages).to_pb().SerializeToString()
        if len(data) > MAX_CONVERSATION_BYTES:
            return False
        await self._pool.execute(  # one round trip: the insert, and a bounded purge of expired rows
            "WITH purged AS (DELETE FROM stored_responses WHERE response_id IN"
            " (SELECT response_id FROM stored_responses WHERE expires_at < now() LIMIT $5))"
            " INSERT INTO stored_responses (response_id, owner, conversation, expires_at)"
            " VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
            response_id,
            owner,
            data,
            float(self._retention),
            PURGE_BATCH,
        )
        return True

    async def conversation(self, response_id: str, owner: str) -> tuple[ChatMessage, ...]:
        """The messages a stored response ended with; NotFound for another owner's or an expired one."""
        data = await self._pool.fetchval(
            "SELECT conversation FROM stored_responses"
            " WHERE response_id = $1 AND (owner = $2 OR $2 = '') AND expires_at > now()",
            response_id,
            owner,
        )
        if data is None:
            raise NotFound(
                f"No stored response '{response_id}' (never stored, expired, or not yours).",
                param="previous_response_id",
                reason="RESPONSE_NOT_FOUND",
            )
        return ChatRequest.from_pb(inference_pb.ChatRequest.FromString(data)).messages
