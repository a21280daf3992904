"""The shared OpenAI-compatible client: request building, SSE parsing, error mapping.

Used by `openai` (chat completions) and `openai_image`. Everything per-provider (URLs, headers,
timeouts) is prepared once in `__init__`; a request costs one orjson dump and the HTTP call.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from pydantic import Field, model_validator

from proxy.contracts import AdapterConfig
from proxy.errors import BadResponse, ProviderError, ProviderTimeout, ProviderUnavailable, error_for_status
from proxy.types import JSON, Delta, Usage


class OpenAICompatConfig(AdapterConfig):
    base_url: str = "https://api.openai.com/v1"
    api_key: str | None = None
    #: A key pool: requests spread over these keys (see providers/keypool.py).
    api_keys: list[str] | None = None
    model: str = "gpt-4o-mini"
    headers: dict[str, str] = {}
    #: Seconds to connect, and to wait for the first byte / between streamed chunks.
    timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(120.0, gt=0)
    #: Default generation parameters; the caller's and the channel's override them.
    params: dict[str, Any] = {}

    @model_validator(mode="after")
    def _one_key_source(self) -> OpenAICompatConfig:
        if self.api_key and self.api_keys:
            raise ValueError("give either api_key or api_keys, not both")
        if self.api_keys is not None and not [k for k in self.api_keys if k]:
            raise ValueError("api_keys must hold at least one key")
        return self

    def keys(self) -> list[str]:
        return [k for k in self.api_keys or [] if k] or ([self.api_key] if self.api_key else [""])


def retry_after(headers: Any) -> float | None:
    """`retry-after-ms`, else `Retry-After` in seconds or as an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, when.timestamp() - time.time()) if when else None


def _message_of(body: bytes) -> tuple[str, str | None]:
    """The upstream's error message and code, without echoing anything large or secret."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        snippet = body[:80].decode("utf-8", "replace").strip().replace("\n", " ")
        return f"non-JSON error body: {snippet!r}", None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or "error")[:300], err.get("code") or err.get("type")
    if isinstance(err, str):
        return err[:300], None
    if isinstance(data, dict) and "message" in data:
        return str(data["message"])[:300], data.get("code")
    return "error", None


async def raise_for_status(resp: aiohttp.ClientResponse, provider: str) -> None:
    if resp.status < 400:
        return
    body = await resp.read()
    message, code = _message_of(body)
    raise error_for_status(resp.status, message, provider=provider, code=code, retry_after=retry_after(resp.headers))


def usage_of(data: Any) -> Usage | None:
    if not isinstance(data, dict):
        return None
    return Usage(
        int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0), int(data.get("total_tokens") or 0)
    )


def stream_error(data: JSON, provider: str) -> ProviderError:
    err = data.get("error")
    message = (err.get("message") if isinstance(err, dict) else str(err)) or "error in stream"
    code = err.get("code") if isinstance(err, dict) else None
    status = 429 if code in ("rate_limit_exceeded", "insufficient_quota") else 502
    return error_for_status(status, str(message)[:300], provider=provider, code=code)


async def sse_deltas(resp: aiohttp.ClientResponse, provider: str) -> AsyncIterator[Delta]:
    """Parse an OpenAI chat-completions SSE stream into deltas.

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
            for delta in _parse_line(line, provider):
                if delta is _DONE:
                    if text:
                        yield Delta(text="".join(text))
                    return
                if delta.text and delta.tool_calls is None and delta.finish_reason is None:
                    text.append(delta.text)
                    continue
                if text:
                    yield Delta(text="".join(text))
                    text = []
                yield delta
        if text:
            yield Delta(text="".join(text))
    for delta in _parse_line(buffer, provider):  # a last line without a newline
        if delta is not _DONE:
            yield delta


_DONE = Delta(finish_reason="[DONE]")


def _parse_line(raw: bytes, provider: str) -> list[Delta]:
    line = raw.strip()
    if not line.startswith(b"data:"):
        return []  # blank separators, `:` comments, `event:` lines
    payload = line[5:].strip()
    if payload == b"[DONE]":
        return [_DONE]
    if not payload:
        return []
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise BadResponse("unparseable stream chunk", provider=provider) from None
    if "error" in data:
        raise stream_error(data, provider)
    out = []
    for choice in data.get("choices") or ():
        delta = choice.get("delta") or {}
        text = delta.get("content") or ""
        tools = delta.get("tool_calls")
        finish = choice.get("finish_reason")
        if text or tools or finish:
            out.append(Delta(text=text, tool_calls=tools, finish_reason=finish))
    usage = usage_of(data.get("usage"))
    if usage is not None:
        out.append(Delta(usage=usage))
    return out


def transport_error(err: BaseException, provider: str) -> ProviderError:
    """Map aiohttp/asyncio failures to the error tree (messages carry no URL with secrets)."""
    if isinstance(err, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return ProviderTimeout("timed out", provider=provider)
    if isinstance(err, aiohttp.ClientConnectorError):
        return ProviderUnavailable(
            f"cannot connect: {err.os_error.strerror or type(err.os_error).__name__}", provider=provider
        )
    if isinstance(err, aiohttp.ClientPayloadError):
        return ProviderUnavailable("the connection broke while reading the answer", provider=provider)
    if isinstance(err, aiohttp.ClientError):
        return ProviderUnavailable(f"connection failed: {type(err).__name__}", provider=provider)
    return ProviderUnavailable(type(err).__name__, provider=provider)


TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)
