"""Logging: text or JSON lines, written by a thread of their own, never by the event loop.

`setup(level, fmt)` puts one handler on the root logger: a log call on the event loop only
appends the record to a deque; a writer thread formats what has collected every 0.02 s and writes
it to stderr in one call. A slow or blocked stderr (a pipe nobody drains fast enough, a terminal)
therefore never stalls serving, and formatting happens off the loop's critical path, in batches.

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
import re
import secrets
import sys
import threading
import time
from collections import deque
from contextvars import ContextVar
from typing import Any, Literal

import orjson

LogFormat = Literal["text", "json"]

#: The running writer (one per process), stopped at exit so the last lines are written.
_writer: _Batching | None = None
#: Seconds between the writer's batches, and the backlog that wakes it sooner.
FLUSH_EVERY, WAKE_AT = 0.02, 1000


class Event:
    """A structured line: an event name and named fields. Subclasses keep their values as
    attributes and build the fields only when the line is written (by the writer thread), so
    logging one costs the event loop an append, not a dict and a formatted string."""

    __slots__ = ()
    event = ""

    def fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def __str__(self) -> str:
        return render(self.event, self.fields())


class Fields(Event):
    """`event`'s line: a name and the fields it was given."""

    __slots__ = ("_fields", "event")

    def __init__(self, name: str, fields: dict[str, Any]) -> None:
        self.event, self._fields = name, fields

    def fields(self) -> dict[str, Any]:
        return self._fields


def render(name: str, fields: dict[str, Any]) -> str:
    """The text form of an event: `name k=v k=v`, None left out, strings quoted when they hold a
    space, a quote, `=` or a newline (or are empty), floats to one decimal."""
    parts = [name]
    for k, v in fields.items():
        if v is None:
            continue
        if isinstance(v, str):
            parts.append(f"{k}={q(v)}")
        elif isinstance(v, float):
            parts.append(f"{k}={v:.1f}")
        else:
            parts.append(f"{k}={v}")
    return " ".join(parts)


def q(v: str) -> str:
    """A string value as `render` writes it (quoted when needed)."""
    if v and not _NEEDS_QUOTES.search(v):
        return v
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_NEEDS_QUOTES = re.compile(r'[ "=\n]')


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log `name` with `fields` (cheap when the level is off: nothing is built)."""
    if logger.isEnabledFor(level):
        emit(logger, level, Fields(name, fields))


def emit(logger: logging.Logger, level: int, line: Event) -> None:
    """Log a structured line (the caller checks `logger.isEnabledFor(level)` first).

    Below WARNING, with our writer running (`serve`), the line goes straight to the writer's
    queue: a `LogRecord` (caller lookup, a dozen attributes, the handler chain) costs ~10 µs on the
    event loop for each of the per-request lines, a `Line` under 1 µs. Warnings and errors, and any
    process whose logging is configured by someone else (tests, an embedding app), go through
    `logging` as usual (the status page's error list hooks in there)."""
    writer = _writer
    if writer is not None and level < logging.WARNING:
        writer.records.append(Line(time.time(), level, logger.name, line))  # type: ignore[arg-type]
    else:
        logger.log(level, line)


_LEVEL_NAMES = {logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARNING", logging.ERROR: "ERROR"}


class Line:
    """What the formatters read of a record, for `event`'s fast path."""

    __slots__ = ("created", "levelname", "levelno", "msg", "name")
    exc_info = exc_text = None

    def __init__(self, created: float, levelno: int, name: str, msg: Event) -> None:
        self.created, self.levelno, self.name, self.msg = created, levelno, name, msg
        self.levelname = _LEVEL_NAMES.get(levelno) or logging.getLevelName(levelno)

    def getMessage(self) -> str:
        return str(self.msg)


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
    """`2026-12-03 17:56:43,232 INFO    switchboard.openai: request ...` (local time), a traceback
    on the following lines."""

    def __init__(self) -> None:
        super().__init__()
        self._second, self._stamp = -1, ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # strftime once a second, not once a line
            self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        ms = int(record.created % 1 * 1000)
        text = f"{self._stamp},{ms:03d} {record.levelname:<7} {record.name}: {record.getMessage()}"
        return f"{text}\n{record.exc_text}" if record.exc_text else text


class JSONFormatter(logging.Formatter):
    """One JSON object per line. Exceptions go in `exc` as text, so a line stays one line."""

    def __init__(self) -> None:
        super().__init__()
        self._second, self._stamp = -1, ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # strftime once a second, not once a line
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        out: dict[str, Any] = {
            "ts": f"{self._stamp}.{int(record.created % 1 * 1000):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        msg = record.msg
        if isinstance(msg, Event):
            out["event"] = msg.event
            out.update((k, v) for k, v in msg.fields().items() if v is not None)
        else:
            out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return orjson.dumps(out, default=str).decode()


class _Batching(logging.Handler):
    """Collects records; a writer thread formats and writes them in batches.

    A log call only appends the record to a deque: no lock taken on the writer's side, no wake-up
    of the writer per line (a thread woken for every line competes with the event loop for the
    GIL at every request). The writer wakes every `FLUSH_EVERY` seconds, or at once when
    `WAKE_AT` records are waiting, formats what is there and writes it with one call. Exception
    info is turned into text here, since a traceback must not outlive its frame in another thread.
    """

    def __init__(self, stream: Any, formatter: logging.Formatter) -> None:
        super().__init__()
        self.stream, self.formatter = stream, formatter
        self.records: deque[logging.LogRecord] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="switchboard-log-writer", daemon=True)
        self._thread.start()

    def handle(self, record: logging.LogRecord) -> bool:  # no handler lock: deque appends are atomic
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
        self.records.append(record)
        if len(self.records) >= WAKE_AT:
            self._wake.set()
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(FLUSH_EVERY)
            self._wake.clear()
            self._write()
        self._write()

    def _write(self) -> None:
        lines = []
        records = self.records
        while records:
            record = records.popleft()
            try:
                lines.append(self.format(record))
            except Exception:  # a bad format string: the line is lost, not the writer
                lines.append(f"(unformattable log record from {record.name}: {record.msg!r})")
        if lines:
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except Exception:  # a closed or broken stream: nothing better to do
                pass

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5)
        super().close()


def setup(level: str, fmt: LogFormat = "text", *, stream: Any = None) -> None:
    """Configure the root logger for this process; a second call replaces the first. Like
    `logging.basicConfig`, it leaves alone a process whose logging someone else configured (root
    handlers that are not ours: an embedding application, pytest) unless `stream` is given.
    `level` applies to Switchboard's loggers; other libraries log warnings and up."""
    global _writer
    root = logging.getLogger()
    foreign = [h for h in root.handlers if not isinstance(h, _Batching)]
    if foreign and stream is None:
        return
    stop()
    # The logging HOWTO's "Optimization": caller, thread and process lookups per record are work
    # nobody reads here (no format uses them), done on the event loop for every line.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # type: ignore[attr-defined]
    writer = _Batching(stream or sys.stderr, JSONFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(writer)
    root.setLevel(logging.WARNING)
    set_level(level)
    _writer = writer
    atexit.register(stop)


def set_level(level: str) -> None:
    """Switchboard's log level (a reload may change it)."""
    logging.getLogger("switchboard").setLevel(getattr(logging, level.upper(), logging.INFO))


def stop() -> None:
    """Write what is waiting and stop the writer thread."""
    global _writer
    if _writer is not None:
        logging.getLogger().removeHandler(_writer)
        _writer.close()
        _writer = None
