"""The OpenAI-compatible base: config, a provider base class, error mapping and SSE chunks.

`openai` (chat completions) and `openai_image` are small classes on top of `OpenAICompatProvider`,
which prepares everything per provider once (URL, key pool, complete headers per key, timeouts):
a request costs one orjson dump and the HTTP call. What any HTTP upstream shares (Retry-After,
masking, transport errors, the SSE reader) lives in `providers/upstream.py`.

OpenAI's error codes are read here and nowhere else: `insufficient_quota` is a QuotaExceeded;
400/413/422 (a bad parameter, `context_length_exceeded`) are the caller's RequestRejected with
the upstream's code and param; 404 (`model_not_found`) is Misconfigured — on Switchboard's doors
the model is the channel's config, never the caller's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from functools import partial
from typing import Any, ClassVar, Literal

import aiohttp
import orjson
from pydantic import Field, model_validator

from providers.keypool import KeyPool, mask
from providers.upstream import DONE, UNPARSEABLE, JSONEvents, non_json_error, probe_get, retry_after, scrub
from proxy.contracts import AdapterConfig, Provider
from proxy.errors import BadResponse, ContextTooLong, ProviderError, QuotaExceeded, error_for_status
from proxy.probe import ProbeOutcome, ProbeResult
from proxy.types import JSON, Delta, Usage


class OpenAICompatConfig(AdapterConfig):
    base_url: str = "https://api.openai.com/v1"
    """The OpenAI-compatible API root, ending in `/v1` or the server's equivalent."""
    api_key: str | None = None
    """Bearer key for the upstream; unset for keyless local servers. Not together with `api_keys`."""
    api_keys: list[str] | None = None
    """A key pool: requests spread over these keys (see providers/keypool.py)."""
    model: str = "gpt-4o-mini"
    """Model sent upstream unless the channel names one."""
    headers: dict[str, str] = {}
    """Extra request headers, e.g. `x-api2d-no-cache: "1"`."""
    timeout: float = Field(10.0, gt=0)
    """Seconds to connect to the upstream."""
    read_timeout: float = Field(120.0, gt=0)
    """Seconds to wait for the first byte of the answer and between streamed chunks."""
    params: dict[str, Any] = {}
    """Default generation parameters; the caller's and the channel's override them."""
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] | None = None
    """Send the caller's `max_tokens` / `max_completion_tokens` under this name (reasoning models want
    `max_completion_tokens`, many compatible servers only know `max_tokens`)."""
    stream_usage: bool = True
    """Ask for the usage chunk (`stream_options.include_usage`); some compatible servers reject it."""
    transcription_model: str | None = None
    """Model for `POST /v1/audio/transcriptions` through this provider when the channel names none
    (e.g. `whisper-1`)."""
    embedding_model: str | None = None
    """Model for `POST /v1/embeddings` through this provider when the channel names none (e.g.
    `text-embedding-3-small`)."""
    moderation_model: str | None = None
    """Model for `POST /moderations` when a channel's `moderation.provider` is this one (e.g.
    `omni-moderation-latest`); unset: the upstream's default."""

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


class OpenAICompatProvider(Provider):
    """A provider on an OpenAI-compatible HTTP API: `path` under `base_url`, one key or a pool."""

    path: ClassVar[str]
    config: OpenAICompatConfig

    def __init__(self, name: str, config: OpenAICompatConfig, http: aiohttp.ClientSession) -> None:
        super().__init__(name, config, http)
        self.url = config.base_url.rstrip("/") + self.path
        self.pool = KeyPool(config.keys(), name)
        self._secrets = tuple(k for k in config.keys() if k)
        self._headers = headers_by_key(config)
        self._timeout = aiohttp.ClientTimeout(total=None, connect=config.timeout, sock_read=config.read_timeout)

    def describe(self) -> str:
        c = self.config
        return f"{c.kind} {c.base_url} model={c.model} {self.pool.summary()}"

    def key_status(self) -> list[dict[str, object]]:
        """Health of each key, masked (`sk-…abcd`)."""
        return self.pool.status()

    def share_health(self, announce: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], bool]:
        """Key health is shared: a key disabled or cooling down here is announced (by key id,
        never the key), and other instances' news is applied to this pool."""
        self.pool.on_change = announce
        return self.pool.apply

    async def raise_for_status(self, resp: aiohttp.ClientResponse) -> None:
        if resp.status >= 400:
            raise error_from_body(resp.status, resp.headers, await resp.read(), self.name, self._secrets)

    async def probe(self) -> list[ProbeResult]:
        """`GET {base_url}/models` with every key of the pool, at once; the pool's key health is
        left alone."""
        url = self.config.base_url.rstrip("/") + "/models"
        return list(await asyncio.gather(*(self._probe(url, key) for key in self._headers)))

    async def _probe(self, url: str, key: str) -> ProbeResult:
        shown = mask(key) if key else "-"
        headers = {k: v for k, v in self._headers[key].items() if k != "content-type"}
        error_of = partial(error_from_body, provider=self.name, secrets=self._secrets)
        try:
            data = await probe_get(self.http, url, headers, self.name, error_of)
        except ProviderError as e:
            return ProbeResult.of_error(shown, e)
        return ProbeResult(shown, ProbeOutcome.REACHABLE, model_listed(data, self.config.model))


def model_listed(data: Any, model: str) -> str:
    """Is `model` in a `GET /models` answer (`{"data": [{"id": ...}]}`)? Only a warning when not:
    some compatible servers list nothing, or not every model they serve."""
    items = data.get("data") if isinstance(data, dict) else None
    ids = {i.get("id") for i in items if isinstance(i, dict)} if isinstance(items, list) else set()
    if model in ids:
        return f"model {model} listed"
    if not ids:
        return f"warning: no model list; {model} not confirmed"
    return f"warning: model {model} not among the {len(ids)} listed"


def error_from_body(
    status: int, headers: Any, body: bytes, provider: str, secrets: Iterable[str] = ()
) -> ProviderError:
    """An OpenAI-style error answer (`{"error": {"message", "type", "param", "code"}}`) → the tree."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        return non_json_error(status, headers, body, provider)
    message, code, param, type_ = _fields_of(data)
    return _openai_error(status, scrub(message, secrets), provider, code, param, type_, retry_after(headers))


def _openai_error(
    status: int,
    message: str,
    provider: str,
    code: str | None,
    param: str | None = None,
    type_: str | None = None,
    wait: float | None = None,
) -> ProviderError:
    """OpenAI's codes that decide more than the status does, then the status."""
    if "insufficient_quota" in (code, type_):
        return QuotaExceeded(message, provider=provider, status=status, code=code)
    if code == "context_length_exceeded":
        return ContextTooLong(message, provider=provider, status=400, code=code, param=param)
    return error_for_status(status, message, provider=provider, code=code, param=param, retry_after=wait)


def _fields_of(data: JSON) -> tuple[str, str | None, str | None, str | None]:
    """message, code, param, type — the strings among them; vLLM and others put the HTTP
    status in `code`, some servers a bare string in `error`, FastAPI a `detail`."""
    err = data.get("error")
    if isinstance(err, dict):
        message = str(err.get("message") or "error")[:300]
        return message, _str(err.get("code")), _str(err.get("param")), _str(err.get("type"))
    if isinstance(err, str):
        return err[:300], _str(data.get("code")), None, None
    text = data.get("message") or data.get("detail") or "error"
    return str(text)[:300], _str(data.get("code")), None, None


def _str(value: Any) -> str | None:
    return value[:100] if isinstance(value, str) and value else None


def usage_of(data: Any) -> Usage | None:
    if not isinstance(data, dict):
        return None
    try:
        return Usage(
            int(data.get("prompt_tokens") or 0),
            int(data.get("completion_tokens") or 0),
            int(data.get("total_tokens") or 0),
        )
    except (TypeError, ValueError):  # a count that is not a number: no usage rather than a crash
        return None


def stream_error(data: JSON, provider: str, secrets: Iterable[str] = ()) -> ProviderError:
    """An `{"error": ...}` chunk inside a 200 stream."""
    err = data.get("error")
    message = str((err.get("message") if isinstance(err, dict) else err) or "error in stream")[:300]
    message = scrub(message, secrets)
    raw = err.get("code") if isinstance(err, dict) else None
    code = _str(raw)
    if code in ("rate_limit_exceeded", "insufficient_quota"):
        status = 429
    elif isinstance(raw, int) and 400 <= raw < 600:  # vLLM and friends put the status here
        status = raw
    else:
        status = 502
    param = _str(err.get("param")) if isinstance(err, dict) else None
    return _openai_error(status, message, provider, code, param)


async def sse_deltas(
    resp: aiohttp.ClientResponse, provider: str, secrets: tuple[str, ...] = ()
) -> AsyncIterator[Delta]:
    """An OpenAI chat-completions SSE stream as deltas (events decoded by `JSONEvents`: multi-line
    data, comments, `retry:`/`event:`/`id:` lines, CR/CRLF/LF, a last event without its blank
    line, a missing `[DONE]`). A usage chunk with empty `choices` is a usage delta; an
    `{"error": ...}` chunk is raised.

    Text that arrived in the same network read is merged into one delta: the caller gets every
    character as soon as it reached us, in one write instead of one per upstream chunk (a slow
    upstream still streams chunk by chunk). Tool-call fragments, finish reasons and usage are
    never merged across.
    """
    events = JSONEvents()
    out: list[Delta] = []
    async for data in resp.content.iter_any():
        values = events.feed(data)
        if not values:
            continue
        done, error = _collect(values, provider, secrets, out)
        for delta in out:
            yield delta
        out.clear()
        if error is not None:
            raise error
        if done:
            return
    _, error = _collect(events.close(), provider, secrets, out)
    for delta in out:
        yield delta
    if error is not None:
        raise error


def _collect(
    values: list[Any], provider: str, secrets: tuple[str, ...], out: list[Delta]
) -> tuple[bool, ProviderError | None]:
    """Decoded events → deltas in `out`, text merged; (saw [DONE], the error that ended it).
    Text that came before an error is in `out`: it still reaches the caller."""
    text: list[str] = []
    try:
        for value in values:
            if value.__class__ is dict and "error" not in value:
                try:
                    deltas = _chunk_deltas(value)
                except (AttributeError, TypeError):  # `choices` or a `delta` of the wrong shape
                    raise BadResponse("stream chunk is not a chat completion chunk", provider=provider) from None
            else:
                deltas = _chunk(value, provider, secrets)
            for delta in deltas:
                if isinstance(delta, str):  # plain text: merged, no Delta built per upstream chunk
                    text.append(delta)
                    continue
                if text:
                    out.append(Delta(text="".join(text)))
                    text = []
                if delta is _DONE:
                    return True, None
                out.append(delta)
    except ProviderError as err:
        if text:
            out.append(Delta(text="".join(text)))
        return False, err
    if text:
        out.append(Delta(text="".join(text)))
    return False, None


_DONE = Delta(finish_reason="[DONE]")


def _chunk(value: Any, provider: str, secrets: tuple[str, ...]) -> list[Delta | str]:
    """One decoded event → its deltas; a text-only delta comes back as the bare `str`."""
    if value is DONE:
        return [_DONE]
    if value is UNPARSEABLE:
        raise BadResponse("unparseable stream chunk", provider=provider)
    if not isinstance(value, dict):
        raise BadResponse("stream chunk is not a JSON object", provider=provider)
    if "error" in value:
        raise stream_error(value, provider, secrets)
    try:
        return _chunk_deltas(value)
    except (AttributeError, TypeError):  # `choices` or a `delta` of the wrong shape
        raise BadResponse("stream chunk is not a chat completion chunk", provider=provider) from None


def _chunk_deltas(data: JSON) -> list[Delta | str]:
    out: list[Delta | str] = []
    for choice in data.get("choices") or ():
        delta = choice.get("delta") or {}
        text = delta.get("content") or delta.get("refusal") or ""
        if not isinstance(text, str):
            raise TypeError("content is not a string")
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
