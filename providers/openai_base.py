"""The shared OpenAI-compatible client: config, request headers, SSE parsing, error mapping.

Used by `openai` (chat completions) and `openai_image`, and the error helpers by `dify`.
Everything per-provider (URLs, headers, timeouts) is prepared once in `__init__`; a request costs
one orjson dump and the HTTP call.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC
from typing import Any, Literal

import aiohttp
import orjson
from pydantic import Field, model_validator

from providers.keypool import mask
from proxy.contracts import AdapterConfig
from proxy.errors import BadResponse, ProviderError, ProviderTimeout, ProviderUnavailable, error_for_status
from proxy.types import JSON, Delta, Usage


class OpenAICompatConfig(AdapterConfig):
    base_url: str = "https://api.openai.com/v1"
    api_key: str | None = None
    #: A key pool: requests spread over these keys (see providers/keypool.py).
    api_keys: list[str] | None = None
    model: str = "gpt-4o-mini"
    #: Extra request headers, e.g. `x-api2d-no-cache: "1"`.
    headers: dict[str, str] = {}
    #: Seconds to connect, and to wait for the first byte / between streamed chunks.
    timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(120.0, gt=0)
    #: Default generation parameters; the caller's and the channel's override them.
    params: dict[str, Any] = {}
    #: Send the caller's `max_tokens` / `max_completion_tokens` under this name (reasoning models
    #: want `max_completion_tokens`, many compatible servers only know `max_tokens`).
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] | None = None
    #: Ask for the usage chunk (`stream_options.include_usage`); some compatible servers reject it.
    stream_usage: bool = True

    @model_validator(mode="after")
    def _one_key_source(self) -> OpenAICompatConfig:
        if self.api_key and self.api_keys:
            raise ValueError("give either api_key or api_keys, not both")
        if self.api_keys is not None and not [k for k in self.api_keys if k]:
            raise ValueError("api_keys must hold at least one key")
        return self

    def keys(self) -> list[str]:
        """The configured keys; `[""]` for keyless local servers (no Authorization header)."""
        return [k for k in self.api_keys or [] if k] or ([self.api_key] if self.api_key else [""])


def headers_by_key(config: OpenAICompatConfig) -> dict[str, dict[str, str]]:
    """Complete request headers for every key, built once at start-up."""
    base = {"content-type": "application/json", "accept": "application/json", **config.headers}
    return {k: {**base, "authorization": f"Bearer {k}"} if k else base for k in config.keys()}


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Mask any of our keys an upstream echoed back in its error text."""
    for secret in secrets:
        if len(secret) >= 8 and secret in text:
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


def error_from_body(
    status: int, headers: Any, body: bytes, provider: str, secrets: Iterable[str] = ()
) -> ProviderError:
    """An upstream error answer → the error tree. A body that is not JSON (a CDN's HTML page)
    is a BadResponse, unless the status alone says auth or rate limit."""
    wait = retry_after(headers)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        kind = (headers.get("content-type") or "no content type").split(";")[0]
        message = f"non-JSON error body ({kind}, {len(body)} bytes)"
        if status in (401, 403, 429):
            return error_for_status(status, message, provider=provider, retry_after=wait)
        return BadResponse(message, provider=provider, status=status)
    message, code = _message_of(data)
    return error_for_status(status, scrub(message, secrets), provider=provider, code=code, retry_after=wait)


def _message_of(data: JSON) -> tuple[str, str | None]:
    err = data.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or "error")[:300], err.get("code") or err.get("type")
    if isinstance(err, str):
        return err[:300], data.get("code")
    text = data.get("message") or data.get("detail") or "error"
    return str(text)[:300], data.get("code")


async def raise_for_status(resp: aiohttp.ClientResponse, provider: str, secrets: Iterable[str] = ()) -> None:
    if resp.status >= 400:
        raise error_from_body(resp.status, resp.headers, await resp.read(), provider, secrets)


def usage_of(data: Any) -> Usage | None:
    if not isinstance(data, dict):
        return None
    return Usage(
        int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0), int(data.get("total_tokens") or 0)
    )


def stream_error(data: JSON, provider: str, secrets: Iterable[str] = ()) -> ProviderError:
    """An `{"error": ...}` chunk inside a 200 stream."""
    err = data.get("error")
    message = str((err.get("message") if isinstance(err, dict) else err) or "error in stream")[:300]
    message = scrub(message, secrets)
    code = err.get("code") if isinstance(err, dict) else None
    if code in ("rate_limit_exceeded", "insufficient_quota"):
        status = 429
    elif isinstance(code, int) and 400 <= code < 600:  # vLLM and friends put the status here
        status, code = code, None
    else:
        status = 502
    return error_for_status(status, message, provider=provider, code=code)


async def sse_deltas(
    resp: aiohttp.ClientResponse, provider: str, secrets: tuple[str, ...] = ()
) -> AsyncIterator[Delta]:
    """Parse an OpenAI chat-completions SSE stream into deltas.

    Robust to `data:` with or without a space, `:` comments, `event:` lines, CRLF, a missing
    `[DONE]`, a usage chunk with empty `choices`, and an `{"error": ...}` chunk (raised).
    Text that arrived in the same network read is merged into one delta: the caller gets every
    character as soon as it reached us, in one write instead of one per upstream chunk (a slow
    upstream still streams chunk by chunk). Tool-call fragments, finish reasons and usage are
    never merged across.
    """
    buffer = b""
    async for data in resp.content.iter_any():
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        text: list[str] = []
        for line in lines:
            if len(line) < 2:  # the blank line after each event ("" or a lone "\r")
                continue
            try:
                deltas = _parse_line(line, provider, secrets)
            except ProviderError:
                if text:  # what arrived before the error still reaches the caller
                    yield Delta(text="".join(text))
                raise
            for delta in deltas:
                if isinstance(delta, str):  # plain text: merged, no Delta built per upstream chunk
                    text.append(delta)
                    continue
                if text:
                    yield Delta(text="".join(text))
                    text = []
                if delta is _DONE:
                    return
                yield delta
        if text:
            yield Delta(text="".join(text))
    for delta in _parse_line(buffer, provider, secrets):  # a last line without a newline
        if delta is not _DONE:
            yield Delta(text=delta) if isinstance(delta, str) else delta


_DONE = Delta(finish_reason="[DONE]")


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


def _parse_line(raw: bytes, provider: str, secrets: tuple[str, ...]) -> Sequence[Delta | str]:
    """One SSE line → its deltas; a text-only delta comes back as the bare `str`."""
    if not raw.startswith(b"data:"):
        raw = raw.strip()
        if not raw.startswith(b"data:"):
            return ()  # blank separators, `:` comments, `event:` lines
    payload = raw[5:].strip()
    if payload == b"[DONE]":
        return (_DONE,)
    if not payload:
        return ()
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise BadResponse("unparseable stream chunk", provider=provider) from None
    if not isinstance(data, dict):
        raise BadResponse("stream chunk is not a JSON object", provider=provider)
    if "error" in data:
        raise stream_error(data, provider, secrets)
    try:
        return _chunk_deltas(data)
    except (AttributeError, TypeError):  # `choices` or a `delta` of the wrong shape
        raise BadResponse("stream chunk is not a chat completion chunk", provider=provider) from None


def _chunk_deltas(data: JSON) -> list[Delta | str]:
    out: list[Delta | str] = []
    for choice in data.get("choices") or ():
        delta = choice.get("delta") or {}
        text = delta.get("content") or delta.get("refusal") or ""
        tools = delta.get("tool_calls")
        finish = choice.get("finish_reason")
        if text and tools is None and finish is None:
            out.append(text)
        elif text or tools or finish:
            out.append(Delta(text=text, tool_calls=tools, finish_reason=finish))
    usage = usage_of(data.get("usage"))
    if usage is not None:
        out.append(Delta(usage=usage))
    return out


def transport_error(err: BaseException, provider: str) -> ProviderError:
    """Map aiohttp/asyncio failures to the error tree (messages carry no URL, header or key)."""
    if isinstance(err, aiohttp.ConnectionTimeoutError):
        return ProviderTimeout("timed out connecting", provider=provider)
    if isinstance(err, asyncio.TimeoutError):  # aiohttp's read timeouts are TimeoutErrors too
        return ProviderTimeout("timed out waiting for the answer", provider=provider)
    if isinstance(err, aiohttp.ClientConnectorError):
        reason = err.os_error.strerror or type(err.os_error).__name__
        return ProviderUnavailable(f"cannot connect: {reason}", provider=provider)
    if isinstance(err, aiohttp.ClientPayloadError):
        return ProviderUnavailable("the connection broke while reading the answer", provider=provider)
    if isinstance(err, aiohttp.ClientError):
        return ProviderUnavailable(f"connection failed: {type(err).__name__}", provider=provider)
    return ProviderUnavailable(type(err).__name__, provider=provider)


TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)
