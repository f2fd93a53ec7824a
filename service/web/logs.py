"""JSON logs, one object per line. Callers pass fields through `extra={"fields": {...}}`."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from service import tracing


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        # Formatted as it is emitted, in the logging task: its current span is the line's.
        if tracing.ENABLED and (trace_id := tracing.current_trace_id()) is not None:
            entry["trace_id"] = trace_id
        if record.exc_info and record.exc_info[0] is not None:
            entry["error_type"] = record.exc_info[0].__name__
            entry["traceback"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(entry, default=str).decode()
        except TypeError:  # what orjson cannot take (an int over 64 bits, a non-str key)
            return json.dumps(entry, default=str)


def configure(level: str = "INFO") -> None:
    """Route every logger (ours, uvicorn's, alembic's) through one JSON handler on stderr."""
    # No caller frame walk, thread or process lookups per record: none of them is logged,
    # and on the request path they cost more than formatting the line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # The broker writes its own access line, with the request id and caller.
    logging.getLogger("uvicorn.access").disabled = True
    # SQL statements at DEBUG would include parameters (sealed values, hashes); they never
    # go to the log. aiosqlite's DEBUG lines repr each call with its parameters too.
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    # httpx logs every URL it fetches at INFO, query string included: a URL must never be
    # how a secret reaches the log. The broker's own lines and metrics record upstream calls.
    logging.getLogger("httpx").setLevel(logging.WARNING)
