"""Log output: the classic text lines, or JSON lines (``[log] format = "json"``).

A JSON line is one object: ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``node``, ``msg``, and,
where known, ``conn`` (the client connection's id on this node), ``request`` (the client's
request id) and the fields a call passes in ``extra`` (``event``, ``transport``, ``peer``,
``user``, ``reason``, ``duration_s``). Connection and request ids come from the record's extras
or, inside a connection's request worker, from :data:`CONN_ID` and :data:`REQUEST_ID`.

With ``[log] connections`` on, the logger ``chatserver.connections`` writes one line when a
client connection is admitted and one when it closes (never one per message); off, it is quiet.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

CONN_ID: ContextVar[int | None] = ContextVar("chatserver_conn_id", default=None)
REQUEST_ID: ContextVar[Any] = ContextVar("chatserver_request_id", default=None)

CONNECTIONS_LOGGER = "chatserver.connections"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Extras copied into a JSON line when a call passes them.
EXTRA_FIELDS = ("event", "transport", "peer", "user", "reason", "duration_s")


class JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "node": self.node,
            "msg": record.getMessage(),
        }
        conn = getattr(record, "conn", None)
        conn = conn if conn is not None else CONN_ID.get()
        if conn is not None:
            line["conn"] = conn
        request = REQUEST_ID.get()
        if request is not None:
            line["request"] = request
        for name in EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level: str, fmt: str, node: str, connections: bool) -> None:
    """Set up the root logger for a ``chatserver`` process (``run``, ``compliance run``)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(node))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    logging.getLogger(CONNECTIONS_LOGGER).setLevel(logging.INFO if connections else logging.WARNING)
