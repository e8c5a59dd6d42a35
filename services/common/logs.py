"""One logging setup for every service process, and the request id that ties its lines together.

Lines are JSON (one object per line: time, level, service, logger, message, request_id,
and any `extra` fields such as model and duration_ms) unless stderr is a terminal, where
they stay human-readable. Prompt text is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextvars import ContextVar

from services.common import tracing

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="")
REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/-]{1,128}$")
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id", "service"}


def request_id_from(value: str | None) -> str:
    """The caller's id when it is a sane one (it ends up in logs and headers), else a new one."""
    if value and _VALID_REQUEST_ID.match(value):
        return value
    return f"req-{uuid.uuid4().hex}"


_SERVICE = ""
_make_record = logging.getLogRecordFactory()


def _record_with_request_id(*args: object, **kwargs: object) -> logging.LogRecord:
    """Every record carries the request id of the context it was logged in, and the service."""
    record = _make_record(*args, **kwargs)
    record.request_id = REQUEST_ID.get()
    record.service = _SERVICE
    if trace_id := tracing.current_trace_id():
        record.trace_id = trace_id
    return record


logging.setLogRecordFactory(_record_with_request_id)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": getattr(record, "service", ""),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if request_id := getattr(record, "request_id", ""):
            line["request_id"] = request_id
        line.update({key: value for key, value in vars(record).items() if key not in _STANDARD})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


RECENT_LINES = 1000
WATCHER_BACKLOG = 1000  # lines a slow watcher may fall behind before it loses some


class _Watcher:
    """One reader of new lines, on its event loop; lines arrive from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[str] = asyncio.Queue(WATCHER_BACKLOG)
        self.dropped = 0

    def offer(self, line: str) -> None:
        with contextlib.suppress(RuntimeError):  # its loop has closed
            self.loop.call_soon_threadsafe(self._put, line)

    def _put(self, line: str) -> None:
        if self.queue.full():
            self.dropped += 1  # never block the process that logs
            return
        if self.dropped:
            notice = {"level": "warning", "logger": __name__, "message": f"{self.dropped} lines skipped: too slow"}
            self.queue.put_nowait(json.dumps(notice))
            self.dropped = 0
        self.queue.put_nowait(line)


class RecentLines(logging.Handler):
    """The process's last log lines as JSON, and live watchers of new ones: what an operator
    reads through the ProcessService (the console's Logs view) without a log system."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: deque[str] = deque(maxlen=RECENT_LINES)
        self.watchers: set[_Watcher] = set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.lines.append(line)
        for watcher in tuple(self.watchers):
            watcher.offer(line)

    async def follow(self, tail: int) -> AsyncIterator[str]:
        """The last `tail` lines, then each new one until the reader stops."""
        watcher = _Watcher()
        with self.lock or contextlib.nullcontext():  # emit holds it: no line lost or sent twice
            recent = list(self.lines)[-tail:] if tail > 0 else []
            self.watchers.add(watcher)
        try:
            for line in recent:
                yield line
            while True:
                yield await watcher.queue.get()
        finally:
            self.watchers.discard(watcher)


RECENT = RecentLines()


def configure_logging(level: str, service: str = "") -> None:
    global _SERVICE
    _SERVICE = service
    handler = logging.StreamHandler()
    if sys.stderr.isatty():
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler, RECENT], force=True)
