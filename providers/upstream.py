"""Talking to an upstream over HTTP, whatever its API: what every HTTP provider shares.

Retry-After parsing, masking our keys in upstream text, transport failures mapped to the error
tree, body lines without a length limit, and server-sent events whose data is JSON, read per the
SSE spec (https://html.spec.whatwg.org/multipage/server-sent-events.html). Nothing here knows a
vendor's error codes: each provider maps its own.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC
from typing import Any

import aiohttp
import orjson

from providers.keypool import mask
from proxy.errors import (
    BadResponse,
    Misconfigured,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RequestRejected,
    error_for_status,
)
from proxy.probe import PROBE_SECONDS

TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Mask any of our keys an upstream echoed back in its error text."""
    for secret in secrets:
        if secret and len(secret) >= 8 and secret in text:
            text = text.replace(secret, mask(secret))
    return text


def retry_after(headers: Any) -> float | None:
    """`retry-after-ms`, else `Retry-After` in seconds or as an HTTP date; None if absent/garbage."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (ValueError, TypeError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


#: Statuses that say enough on their own when the body is some proxy's HTML page.
_PLAIN_STATUSES = frozenset({401, 403, 404, 413, 429})


def non_json_error(status: int, headers: Any, body: bytes, provider: str) -> ProviderError:
    """An error answer whose body is not the API's JSON (a CDN's or reverse proxy's page).
    Auth, rate limit, unknown path and too-large body are read from the status; anything else
    is a BadResponse (retryable: such pages usually mean the upstream is having trouble)."""
    kind = (headers.get("content-type") or "no content type").split(";")[0]
    message = f"non-JSON error body ({kind}, {len(body)} bytes)"
    if status in _PLAIN_STATUSES:
        return error_for_status(status, message, provider=provider, retry_after=retry_after(headers))
    return BadResponse(message, provider=provider, status=status)


def transport_error(err: BaseException, provider: str) -> ProviderError:
    """Map aiohttp/asyncio failures to the error tree (messages carry no URL, header or key)."""
    if isinstance(err, aiohttp.ConnectionTimeoutError):
        return ProviderTimeout("timed out connecting", provider=provider)
    if isinstance(err, asyncio.TimeoutError):  # aiohttp's read timeouts are TimeoutErrors too
        return ProviderTimeout("timed out waiting for the answer", provider=provider)
    if isinstance(err, aiohttp.ClientConnectorError):
        # the errno's own text ("Connection refused"): asyncio's strerror names the address
        code = err.os_error.errno
        reason = os.strerror(code) if code and code > 0 else err.os_error.strerror or type(err.os_error).__name__
        return ProviderUnavailable(f"cannot connect: {reason}", provider=provider)
    if isinstance(err, aiohttp.ClientPayloadError):
        return ProviderUnavailable("the connection broke while reading the answer", provider=provider)
    if isinstance(err, aiohttp.ClientError):
        return ProviderUnavailable(f"connection failed: {type(err).__name__}", provider=provider)
    return ProviderUnavailable(type(err).__name__, provider=provider)


#: A whole probe call (`Provider.probe`), connecting included.
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=PROBE_SECONDS)
#: (status, headers, body) of an error answer → the provider's error for it.
ErrorOf = Callable[[int, Any, bytes], ProviderError]


async def probe_get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], provider: str, error_of: ErrorOf
) -> Any:
    """`GET url` for a probe, within PROBE_TIMEOUT: the decoded JSON of a 2xx answer. Raises the
    error tree: `error_of` for an error status, `transport_error` for no answer, Misconfigured
    for a 2xx that is not JSON (the URL is some web page, not the API)."""
    try:
        async with http.get(url, headers=headers, timeout=PROBE_TIMEOUT) as resp:
            status, answer, body = resp.status, resp.headers, await resp.read()
    except TRANSPORT_ERRORS as e:
        raise transport_error(e, provider) from None
    if status >= 400:
        raise error_of(status, answer, body)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        kind = (answer.get("content-type") or "no content type").split(";")[0]
        raise Misconfigured(
            f"answered {kind}, not JSON: not the API's URL?", provider=provider, status=status
        ) from None


async def iter_lines(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body's lines (without the newline), with no line-length limit: aiohttp's own line
    iterator fails on lines over its buffer limit, and Dify's node events can be that large."""
    buffer = b""
    async for data in resp.content.iter_any():
        buffer += data
        if b"\n" in data:
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                yield line
    if buffer:
        yield buffer


# ------------------------------------------------------------------------ server-sent events

#: An event whose data is `[DONE]` (OpenAI's end of stream).
DONE: Any = type("Done", (), {"__repr__": lambda self: "DONE"})()
#: An event whose data is not JSON.
UNPARSEABLE: Any = type("Unparseable", (), {"__repr__": lambda self: "UNPARSEABLE"})()


class JSONEvents:
    """Decodes a server-sent event stream whose `data` is JSON, fed as network reads arrive.

    Per the spec: lines end in LF, CRLF or CR; `:` lines are comments; `event`, `id` and `retry`
    fields are ignored; an event's `data` lines are joined with LF and the event is dispatched at
    the blank line that ends it. Two liberties, both for streaming latency and lenient peers:
    a `data` line that is complete JSON (or `[DONE]`) on its own is dispatched at once instead of
    at the blank line (a read that ends between the two must not hold the text back), and so
    servers that forget the blank line between events still work; and at the end of the body an
    event without its closing blank line is still delivered.

    `feed`/`close` return the decoded values in order: parsed JSON, `DONE`, or `UNPARSEABLE`.
    No line-length limit.
    """

    __slots__ = ("_buffer", "_data")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []  # data lines of the event being read

    def feed(self, chunk: bytes) -> list[Any]:
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            tail = b"\r" if buffer.endswith(b"\r") else b""  # its LF may come in the next read
            if tail:
                buffer = buffer[:-1]
            lines = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
            self._buffer = lines.pop() + tail
        else:
            lines = buffer.split(b"\n")
            self._buffer = lines.pop()
        out: list[Any] = []
        for line in lines:
            if not line and not self._data:
                continue  # the blank line after an event already dispatched
            # the common case first: `data: {...}` complete on its line, no event pending
            if line[:5] == b"data:" and not self._data:
                try:
                    out.append(orjson.loads(line[5:]))  # JSON allows the leading space
                    continue
                except orjson.JSONDecodeError:
                    pass
            self._line(line, out)
        return out

    def close(self) -> list[Any]:
        """The end of the body: a last line without its newline, a last event without its
        blank line."""
        out: list[Any] = []
        if self._buffer:
            self._line(self._buffer.rstrip(b"\r"), out)
            self._buffer = b""
        self._line(b"", out)
        return out

    def _line(self, line: bytes, out: list[Any]) -> None:
        if not line:  # the blank line: dispatch
            if self._data:
                data = b"\n".join(self._data)
                self._data = []
                if data.strip():  # an event of empty data lines carries nothing
                    out.append(_decode(data))
            return
        if not line.startswith(b"data"):
            line = line.lstrip()  # lenient: indented fields
            if not line.startswith(b"data"):
                return  # comments, event/id/retry fields, unknown fields
        if line[4:5] == b":":
            value = line[5:]
            if value[:1] == b" ":
                value = value[1:]
        elif len(line) == 4:
            value = b""
        else:
            return  # a field that merely starts with "data"
        if self._data:
            self._data.append(value)
            return
        if not value.strip():
            self._data.append(value)  # may still be the start of a multi-line event
            return
        decoded = _decode(value)
        if decoded is UNPARSEABLE:
            self._data.append(value)  # the first line of a multi-line event
        else:
            out.append(decoded)


def _decode(data: bytes) -> Any:
    if data.strip() == b"[DONE]":
        return DONE
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return UNPARSEABLE


def no_model(provider: str, what: str, field: str) -> RequestRejected:
    """The refusal of an embeddings / transcription request that names no model: neither the
    channel's `model` nor the provider's `field` is set (a 400 that says which to set)."""
    return RequestRejected(
        f"no {what} model for provider {provider}: set the channel's model or the provider's {field}",
        provider=provider,
        status=400,
        param="model",
    )
