"""Logging: text or JSON lines, written by a thread of their own, never by the event loop.

`setup(level, fmt)` puts one `QueueHandler` on the root logger: a log call on the event loop
only appends the record to a queue; a `QueueListener` thread formats it and writes it to stderr.
A slow or blocked stderr (a pipe nobody drains fast enough, a terminal) therefore never stalls
serving, and formatting happens off the loop's critical path.

Structured lines: `event(logger, level, name, **fields)` logs one event with named fields. As
text it reads `name k=v k=v` (values with spaces quoted); as JSON (`server.log_format: json`)
it is one object per line: `{"ts", "level", "logger", "event", ...fields}`. Other lines carry
their message in `msg`. Fields whose value is None are left out.

Never pass secrets or message contents as fields; contents only when `server.log_content` is
on (the callers check it).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import logging.handlers
import queue
import re
import secrets
import sys
import time
from contextvars import ContextVar
from typing import Any, Literal

import orjson

LogFormat = Literal["text", "json"]

#: The running listener (one per process), stopped at exit so the last lines are written.
_listener: logging.handlers.QueueListener | None = None


class Fields:
    """A log record's message for `event`: a name and its fields, rendered when formatted."""

    __slots__ = ("fields", "name")

    def __init__(self, name: str, fields: dict[str, Any]) -> None:
        self.name, self.fields = name, fields

    def __str__(self) -> str:
        parts = [self.name]
        for k, v in self.fields.items():
            if v is None:
                continue
            text = f"{v:.1f}" if isinstance(v, float) else str(v)
            if not text or any(c in text for c in ' "=\n'):
                text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
            parts.append(f"{k}={text}")
        return " ".join(parts)


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log `name` with `fields` (cheap when the level is off: nothing is built)."""
    if logger.isEnabledFor(level):
        logger.log(level, Fields(name, fields))


# ------------------------------------------------------------------------------ request ids


#: The request (or platform event) being handled: set by the front door and the webhook handler;
#: background work started from there inherits it (asyncio copies the context into new tasks),
#: so a platform event's answer and every upstream attempt log the same id.
REQUEST_ID: ContextVar[str | None] = ContextVar("switchboard_request_id", default=None)
_ID_PREFIX = secrets.token_hex(3)
_ids = itertools.count(1)
_VALID_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def request_id(given: bytes | str | None = None) -> str:
    """The caller's `X-Request-Id` when it is a sane token (letters, digits, `._:-`, ≤ 128
    characters), else a new one: a per-process prefix and a counter (cheap, unique per process)."""
    if given:
        text = given.decode("latin-1") if isinstance(given, bytes) else given
        if _VALID_ID.fullmatch(text):
            return text
    return f"{_ID_PREFIX}-{next(_ids):x}"


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")


class JSONFormatter(logging.Formatter):
    """One JSON object per line. Exceptions go in `exc` as text, so a line stays one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if isinstance(record.msg, Fields):
            out["event"] = record.msg.name
            out.update((k, v) for k, v in record.msg.fields.items() if v is not None)
        else:
            out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return orjson.dumps(out, default=str).decode()


def _iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class _Enqueue(logging.handlers.QueueHandler):
    """Hands records to the writer thread as they are: formatting happens there. (The standard
    `prepare` formats on the caller's thread.) Exception info is turned into text here, since a
    traceback object must not outlive the frame that raised in another thread."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
        return record


def setup(level: str, fmt: LogFormat = "text", *, stream: Any = None) -> None:
    """Configure the root logger for this process; a second call replaces the first. Like
    `logging.basicConfig`, it leaves alone a process whose logging someone else configured (root
    handlers that are not ours: an embedding application, pytest) unless `stream` is given.
    `level` applies to Switchboard's loggers; other libraries log warnings and up."""
    global _listener
    root = logging.getLogger()
    foreign = [h for h in root.handlers if not isinstance(h, _Enqueue)]
    if foreign and stream is None:
        return
    stop()
    for h in list(root.handlers):
        if isinstance(h, _Enqueue):
            root.removeHandler(h)
    writer = logging.StreamHandler(stream or sys.stderr)
    writer.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root.addHandler(_Enqueue(records))
    root.setLevel(logging.WARNING)
    set_level(level)
    _listener = logging.handlers.QueueListener(records, writer, respect_handler_level=False)
    _listener.start()
    atexit.register(stop)


def set_level(level: str) -> None:
    """Switchboard's log level (a reload may change it)."""
    logging.getLogger("switchboard").setLevel(getattr(logging, level.upper(), logging.INFO))


def stop() -> None:
    """Write what is queued and stop the writer thread."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None
