"""Structured logs: one JSON object per line, on stderr (journald keeps them as they are) or
in ``log.file``.

Every record has ``ts``, ``level``, ``logger`` and ``msg``; fields passed with ``extra=``
(``route``, ``status``, ...) become members of the object. Within a request every line also
carries its ``request_id``, taken from a context variable that the request middleware sets
and that follows the request into worker threads (``api.state.blocking``). Nothing that logs
here passes a secret or a token.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id",
                                                                       default=None)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message",
                                                                           "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = REQUEST_ID.get()
        if rid is not None:
            out["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


_handler: logging.Handler | None = None


def setup(level: str = "info", path: str | None = None) -> None:
    """Log JSON lines at ``level`` to ``path`` (appended) or stderr. Calling it again (on
    SIGHUP) reopens the file, so log rotation can move the old one away."""
    global _handler
    handler = logging.FileHandler(path, encoding="utf-8") if path else \
        logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    _handler = handler
    # aiohttp's own access log duplicates ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
