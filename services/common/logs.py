"""One logging setup for every service process, and the request id that ties its lines together.

Lines are JSON (one object per line: time, level, service, logger, message, request_id,
and any `extra` fields such as model and duration_ms) unless stderr is a terminal, where
they stay human-readable. Prompt text is never logged.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
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


def configure_logging(level: str, service: str = "") -> None:
    global _SERVICE
    _SERVICE = service
    handler = logging.StreamHandler()
    if sys.stderr.isatty():
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
