"""Raw ASGI helpers for the hot path (and the body reader every front door shares).

`POST /v1/chat/completions` speaks ASGI directly instead of going through Starlette's Request,
Response and StreamingResponse: per request that saves the middleware and router layers, the
Request/Headers objects, and for streams Starlette's anyio task group (on Python 3.11 anyio's
loop lookups are a `getpid()` syscall each — 11 % of the CPU in the streaming profile). Measured
in `make bench`; see BENCHMARKS.md. Everything else is served by Starlette as usual.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from proxy.errors import RequestError

Headers = list[tuple[bytes, bytes]]


class ClientGone(Exception):
    """The client disconnected before its request body arrived (a client abort, not our error)."""


#: The status recorded for a client that left before its request was read (nginx's "client
#: closed request"); it is never sent, there is nobody to send it to.
CLIENT_CLOSED = 499


def json_object(raw: bytes, what: str = "body") -> dict[str, Any]:
    """`raw` as a JSON object, or a `RequestError` (400) saying what it is instead: what every
    JSON webhook parses first."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RequestError(f"{what} is not JSON") from None
    if not isinstance(data, dict):
        raise RequestError(f"{what} is not a JSON object")
    return data


def too_large(limit: int, size: int | None = None) -> RequestError:
    what = f"({size} bytes; the limit is {limit})" if size is not None else f"(over {limit} bytes)"
    return RequestError(f"The request body is too large {what}.", status=413, code="request_too_large")


async def read_body(
    receive: Receive, limit: int, declared: str | bytes | None = None, deadline: float | None = None
) -> bytes:
    """The raw body, refusing (413) anything over `limit` bytes without reading it all.

    `declared` is the Content-Length header, checked before anything is read. With `deadline`,
    a body that has not fully arrived that many seconds after the first read is a 408 (a slow
    or stalled client must not hold the request open); the answer should close the connection."""
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError("Content-Length is not a number.") from None
        if size > limit:
            raise too_large(limit, size)
    if deadline is None:
        return await _read(receive, limit)
    # A bare timer that cancels this task, rather than asyncio.timeout: same semantics here (the
    # read has no other awaits to protect), half the cost per request (~3 µs against ~6 µs).
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(deadline, expire)
    try:
        return await _read(receive, limit)
    except asyncio.CancelledError:
        if not expired or task.uncancel():  # cancelled by someone else (too): theirs to handle
            raise
        raise RequestError(
            f"The request body did not arrive within {deadline:g} seconds.", status=408, code="request_timeout"
        ) from None
    finally:
        timer.cancel()


async def _read(receive: Receive, limit: int) -> bytes:
    message = await receive()
    if message["type"] != "http.request":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):  # the usual case: one message holds it all
        if len(body) > limit:
            raise too_large(limit)
        return body
    chunks, size = [body], len(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_bytes(send: Send, status: int, body: bytes, head: Iterable[tuple[bytes, bytes]]) -> None:
    """A whole response: `head` are the headers other than content-length."""
    headers = [*head, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


#: Streams that end sooner than this never start a disconnect watcher (most answers relayed from
#: a fast upstream); a client that left before is still noticed at this mark.
WATCH_AFTER = 0.05


async def send_stream(receive: Receive, send: Send, headers: Headers, body: AsyncIterator[bytes]) -> None:
    """Send `body` chunk by chunk as it is produced (200, chunked).

    A watcher task waits for `http.disconnect`; when the client goes away mid-answer it cancels
    this task, so the producer (and with it the upstream request) stops at once instead of
    generating for nobody. The watcher starts `WATCH_AFTER` seconds in, so a short stream
    creates no task at all (task creation and registration showed in the streaming profile).
    `body` is always closed."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    done = gone = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        if not done:  # after the last send, uvicorn reports a finished response as a disconnect
            gone = True
            task.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(WATCH_AFTER, start_watching)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async for chunk in body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        done = True
        await send({"type": "http.response.body", "body": b""})
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()  # the client left: a normal end for us, not a cancellation
    finally:
        done = True
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
        await body.aclose()  # type: ignore[attr-defined]


def header_map(scope: Scope, wanted: frozenset[bytes]) -> dict[bytes, bytes]:
    """The request headers named in `wanted` (lower-case names), in one pass over the scope."""
    return {k: v for k, v in scope["headers"] if k in wanted}
