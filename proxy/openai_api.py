"""The OpenAI-compatible front door: POST /v1/chat/completions, GET /v1/models.

This is the hot path. Everything that can be prepared at start-up is (key digests, the model
list); a request costs one auth lookup, one JSON parse, one validation pass and the upstream
call. Streams are passed through chunk by chunk.

Sessions: a request that names one (`X-Conversation-Id` header, else the `user` field) gets
provider memory (Dify's conversation_id) kept per (key, channel, session). If such a request
carries no assistant turns (a stateless client sending only the new message), the stored
transcript is prepended and the exchange recorded, so context also survives failover and
restarts. Without a session name nothing is stored: the messages pass through as sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.config import Channel, KeyConfig, Settings
from proxy.engine import Engine
from proxy.errors import (
    CALLER_STATUSES,
    ChainFailed,
    OverLimit,
    RequestError,
    RequestRejected,
    StoreUnavailable,
    StreamInterrupted,
)
from proxy.failover import Outcome
from proxy.http_util import ClientGone, header_map, read_body, send_bytes, send_stream
from proxy.limiter import NO_GRANT, Grant
from proxy.limits import Limits
from proxy.logs import REQUEST_ID, Event, emit, q, request_id
from proxy.refusals import UPSTREAM
from proxy.routing import conversation as conversation_of
from proxy.types import ChatRequest, Completion, Delta, Message, RequestObserver, Usage

log = logging.getLogger("switchboard.openai")

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
OWN_FIELDS = frozenset({"model", "messages", "stream", "stream_options", "user", "n"})
JSON_TYPE = "application/json"
WANTED_HEADERS = frozenset({b"authorization", b"content-length", b"x-conversation-id", b"x-request-id"})
JSON_HEAD = ((b"content-type", b"application/json"),)
#: A 408 (the body was too slow) closes the connection: the rest of the body is not worth reading.
CLOSE_HEAD = (*JSON_HEAD, (b"connection", b"close"))
#: A 503 for a store that is down: clients that honour Retry-After come back a little later.
STORE_DOWN_HEAD = (*JSON_HEAD, (b"retry-after", b"5"))
SSE_HEAD = ((b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"))

#: Told of every refused request: its status, our reason code (None: invalid request) and the
#: offending field. Called on the refusal paths only.
Refused = Callable[[int, str | None, str | None], None]


def _not_counted(status: int, reason: str | None, param: str | None) -> None:
    return None


class Trace(Event):
    """One API request as its log line tells it: filled in as the request goes, logged as it is
    (its fields are built by the log writer, off the event loop)."""

    __slots__ = (
        "channel",
        "content",
        "failover",
        "first_byte",
        "id",
        "key",
        "latency",
        "provider",
        "started",
        "status",
        "stream",
        "tokens",
    )
    event = "request"

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.id: str | None = None
        self.status = 0
        self.first_byte = self.latency = 0.0
        self.channel = self.provider = self.key = None  # type: str | None
        self.stream = self.failover = False
        self.tokens: tuple[int, int, bool] | None = None
        self.content: tuple[str, str] | None = None  # prompt, answer: only with server.log_content

    async def reply(self, send: Send, status: int, body: bytes, head: Iterable[tuple[bytes, bytes]]) -> None:
        """A whole response, with this request's id (`X-Request-Id`); its status is noted."""
        self.status = status
        await send_bytes(send, status, body, (*head, (b"x-request-id", self.request_id().encode())))

    def request_id(self) -> str:
        if self.id is None:  # refused before the headers were read
            self.id = request_id()
        return self.id

    def observe(self, finished: RequestObserver) -> None:
        status = self.status
        outcome = "ok" if status < 400 else "client_gone" if status == 499 else "refused" if status < 500 else "error"
        self.latency = time.monotonic() - self.started
        ttft = self.first_byte - self.started if self.stream and self.first_byte else None
        finished("openai", self.channel, outcome, self.latency, ttft, self.failover)

    def __str__(self) -> str:  # `render(self.event, self.fields())`, in a third of the time
        out = f"request request_id={self.id} door=openai"
        if self.channel is not None:
            out += f" channel={q(self.channel)}"
        if self.provider is not None:
            out += f" provider={q(self.provider)}"
        if self.key is not None:
            out += f" key={q(self.key)}"
        out += f" status={self.status} stream={self.stream} latency_ms={self.latency * 1000:.1f}"
        if self.stream and self.first_byte:
            out += f" ttft_ms={(self.first_byte - self.started) * 1000:.1f}"
        if self.tokens is not None:
            p, c, est = self.tokens
            out += f" tokens_in={p} tokens_out={c} tokens_estimated=True" if est else f" tokens_in={p} tokens_out={c}"
        if self.failover:
            out += " failover=True"
        if self.content is not None:
            out += f" prompt={q(self.content[0])} answer={q(self.content[1])}"
        return out

    def fields(self) -> dict[str, Any]:
        ttft = (self.first_byte - self.started) * 1000 if self.stream and self.first_byte else None
        p, c, est = self.tokens or (None, None, None)
        prompt, answer = self.content or (None, None)
        return {
            "request_id": self.id,
            "door": "openai",
            "channel": self.channel,
            "provider": self.provider,
            "key": self.key,
            "status": self.status,
            "stream": self.stream,
            "latency_ms": round(self.latency * 1000, 1),
            "ttft_ms": None if ttft is None else round(ttft, 1),
            "tokens_in": p,
            "tokens_out": c,
            "tokens_estimated": est or None,
            "failover": self.failover or None,
            "prompt": prompt,
            "answer": answer,
        }


def error_body(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def error_response(
    status: int,
    message: str,
    type_: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = error_body(message, type_, param=param, code=code)
    return Response(body, status, headers=headers, media_type=JSON_TYPE)


def digest(key: str | bytes) -> str:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


def parse_messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise RequestError("'messages' must be a non-empty array of message objects.", param="messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}] must be an object.", param=f"messages[{i}]")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a list or object is not hashable
            got = repr(role) if isinstance(role, str) else f"a JSON {_json_type(role)}"
            raise RequestError(
                f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}; got {got[:80]}.",
                param=f"messages[{i}].role",
            )
        content = m.get("content")
        if isinstance(content, list):
            _check_parts(content, i)
        elif not (isinstance(content, str) or (content is None and role in ("assistant", "function"))):
            raise RequestError(
                f"messages[{i}].content must be a string or an array of content parts.", param=f"messages[{i}].content"
            )
        extra = {k: v for k, v in m.items() if k not in ("role", "content")} or None
        out.append(Message(role, content, extra))
    return out


def _check_parts(parts: list[Any], i: int) -> None:
    """Content parts are objects with a string `type`; a text part's `text` is a string (other
    part types go upstream as sent, for the backend to judge)."""
    for j, p in enumerate(parts):
        if not isinstance(p, dict) or not isinstance(p.get("type"), str):
            raise RequestError(
                f"messages[{i}].content[{j}] must be a content part object with a string 'type'.",
                param=f"messages[{i}].content[{j}]",
            )
        if p["type"] == "text" and not isinstance(p.get("text"), str):
            raise RequestError(
                f"messages[{i}].content[{j}].text must be a string.", param=f"messages[{i}].content[{j}].text"
            )


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


class DoorView:
    """What the front door reads from one config, prepared once per config (at start-up and on
    each reload). A request reads `door.view` once and keeps it: a reload swaps the reference."""

    __slots__ = ("keys", "offered", "settings")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.offered = tuple(c for c in settings.channels if c.providers)
        self.keys: dict[str, tuple[str, KeyConfig]] = {
            digest(k.key): (k.name or digest(k.key)[:12], k) for k in settings.raw.keys
        }


class OpenAIFrontDoor:
    """The OpenAI-compatible API. The instance itself is the ASGI app of
    `POST /v1/chat/completions` (the hot path: no Starlette Request/Response objects).

    `/v1/models` offers only the channels that have an enabled provider."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        refused: Refused = _not_counted,
        finished: RequestObserver | None = None,
    ) -> None:
        self.engine = engine
        self.finished = finished
        self.view = DoorView(settings)
        self.refused = refused
        self.max_body = settings.raw.server.max_body_bytes
        self.body_timeout = settings.raw.server.body_timeout
        self.created = int(time.time())
        # answer ids: a random per-process prefix and a counter (uuid4 is a syscall per answer)
        self._id_prefix = "chatcmpl-" + secrets.token_hex(8)
        self._ids = itertools.count(1)

    @property
    def settings(self) -> Settings:
        """The config new requests use (a reload replaces it)."""
        return self.view.settings

    def use(self, settings: Settings) -> None:
        """A reload: requests from now on use `settings`; those in flight keep their view."""
        self.view = DoorView(settings)

    # -- helpers -----------------------------------------------------------------------------

    def _auth(self, header: bytes | None, view: DoorView) -> tuple[str, KeyConfig]:
        # looked up by the SHA-256 of the token, so no comparison ever runs on the secret itself
        scheme, _, token = (header or b"").partition(b" ")
        token = token.strip()
        found = view.keys.get(digest(token)) if token and scheme.lower() == b"bearer" else None
        if found is None:
            raise RequestError(
                "Incorrect API key provided. Send 'Authorization: Bearer <key>' with one of the configured keys.",
                status=401,
                code="invalid_api_key",
            )
        return found

    def _channel(self, key: KeyConfig, name: Any, view: DoorView) -> Channel:
        if not isinstance(name, str) or not name:
            raise RequestError("'model' is required and must name a channel.", param="model")
        channel = view.settings.by_name.get(name)
        if channel is None or not key.allows(name):
            raise RequestError(
                f"The model '{name}' does not exist or you do not have access to it.",
                status=404,
                param="model",
                code="model_not_found",
            )
        return channel

    def _answer_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"

    async def _build(
        self, scope: Scope, receive: Receive, trace: Trace
    ) -> tuple[Channel, ChatRequest, list[Message], bool, Grant, str]:
        view = self.view  # this request's config, whatever a reload does meanwhile
        headers = header_map(scope, WANTED_HEADERS)
        trace.id = request_id(headers.get(b"x-request-id"))
        REQUEST_ID.set(trace.id)
        key_name, key = self._auth(headers.get(b"authorization"), view)
        trace.key = key_name
        body = await read_body(receive, self.max_body, headers.get(b"content-length"), self.body_timeout)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise RequestError("We could not parse the JSON body of your request.") from None
        if not isinstance(data, dict):
            raise RequestError("The request body must be a JSON object.")
        channel = self._channel(key, data.get("model"), view)
        trace.channel = channel.name
        messages = parse_messages(data.get("messages"))
        stream = data.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError("'stream' must be a boolean.", param="stream")
        if data.get("n", 1) != 1:
            raise RequestError("Only n=1 is supported.", param="n")
        options = data.get("stream_options")
        if options is not None and (not stream or not isinstance(options, dict)):
            raise RequestError(
                "'stream_options' must be an object and is only allowed with stream=true.", param="stream_options"
            )
        user = data.get("user")
        if user is not None and not isinstance(user, str):
            raise RequestError("'user' must be a string.", param="user")
        params = {k: v for k, v in data.items() if k not in OWN_FIELDS}
        named = headers.get(b"x-conversation-id")
        session = named.decode("latin-1") if named else user
        conversation, stateless, record = "", False, []
        if session:
            conversation = conversation_of(channel.name, "openai", key_name, session)
            stateless = not any(m.role == "assistant" for m in messages)
            if stateless:
                record = [m for m in messages if m.role not in ("system", "developer")]
        req = await self.engine.request(
            channel,
            messages,
            conversation=conversation,
            with_history=stateless,
            user=f"{key_name}:{session}" if session else key_name,
            params=params,
            stream=stream,
        )
        limits = view.settings.limits
        grant = await self._admit(limits, key_name, channel, req) if limits.active else NO_GRANT
        return channel, req, record, bool(options and options.get("include_usage")), grant, key_name

    async def _admit(self, limits: Limits, key_id: str, channel: Channel, req: ChatRequest) -> Grant:
        """The key's and the channel's limits (the last step of `_build`: nothing after it
        raises, so the caller always gets the grant to release). Raises `OverLimit`."""
        key, chan = limits.key_targets.get(key_id), limits.channel_targets.get(channel.name)
        targets = (key, chan) if key and chan else (key,) if key else (chan,) if chan else ()
        if not targets:
            return NO_GRANT
        grant = await self.engine.limiter.admit(targets, limits.slot_lease)
        grant.prompt = req.messages
        return grant

    # -- endpoints ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /v1/chat/completions. Never raises to the server: every failure is an OpenAI
        error JSON (or, once a stream has started, an error event in it)."""
        trace = Trace()
        try:
            await self.chat_completions(scope, receive, send, trace)
        except ClientGone:
            trace.status = trace.status or 499
        except StoreUnavailable as e:
            self.engine.store_failed("openai")
            log.warning("chat completion refused: %s", e)
            body = error_body(
                "Switchboard's store is unavailable, so the request cannot be served now; try again shortly.",
                "server_error",
                code="store_unavailable",
            )
            with contextlib.suppress(Exception):  # fails harmlessly if the response had started
                await trace.reply(send, 503, body, STORE_DOWN_HEAD)
        except Exception:
            log.exception("chat completion failed")
            body = error_body("Internal error in Switchboard; see its log.", "server_error", code="internal_error")
            with contextlib.suppress(Exception):  # fails harmlessly if the response had started
                await trace.reply(send, 500, body, JSON_HEAD)
        finally:
            REQUEST_ID.set(None)  # for a caller that ran this in its own task (tests, embedding apps)
            if self.finished is not None:
                trace.observe(self.finished)
            else:
                trace.latency = time.monotonic() - trace.started
            if log.isEnabledFor(logging.INFO):
                emit(log, logging.INFO, trace)

    async def chat_completions(self, scope: Scope, receive: Receive, send: Send, trace: Trace) -> None:
        try:
            channel, req, record, usage, grant, key_name = await self._build(scope, receive, trace)
        except RequestError as e:
            self.refused(e.status, e.code, e.param)
            body = error_body(e.message, "invalid_request_error", param=e.param, code=e.code)
            return await trace.reply(send, e.status, body, CLOSE_HEAD if e.status == 408 else JSON_HEAD)
        except OverLimit as e:
            return await trace.reply(send, 429, *over_limit(e))
        if grant is NO_GRANT:
            return await self._answer(channel, req, record, usage, grant, key_name, receive, send, trace)
        try:
            await self._answer(channel, req, record, usage, grant, key_name, receive, send, trace)
        finally:
            await grant.release()  # nothing when the answer already charged it

    async def _answer(
        self,
        channel: Channel,
        req: ChatRequest,
        record: list[Message],
        usage: bool,
        grant: Grant,
        key_name: str,
        receive: Receive,
        send: Send,
        trace: Trace,
    ) -> None:
        try:
            if req.stream:
                return await self._stream(channel, req, record, usage, grant, key_name, receive, send, trace)
            provider, result = await self.engine.complete(channel, req)
            trace.provider, trace.failover = provider, provider != channel.providers[0]
        except RequestRejected as e:
            status, body = rejected(e)
            self.refused(status, UPSTREAM, e.param)
            return await trace.reply(send, status, body, JSON_HEAD)
        except ChainFailed as e:
            return await trace.reply(send, *self._chain_failed(channel, e), JSON_HEAD)
        if record:
            await self.engine.record(req.conversation, record, result.text)
        body = orjson.dumps(self._completion_body(channel.name, result))
        await trace.reply(send, 200, body, (*JSON_HEAD, (b"x-switchboard-provider", provider.encode())))
        await grant.finish(result.usage, result.text)
        trace.tokens = self.engine.usage.note(
            channel=channel.name,
            provider=provider,
            model=result.model or req.model,
            key=key_name,
            usage=result.usage,
            prompt=req.messages,
            answer=result.text,
        )
        if self.view.settings.raw.server.log_content:
            trace.content = (_last_user_text(req), result.text)

    def _completion_body(self, model: str, c: Completion) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": c.text}
        if c.tool_calls:
            message["tool_calls"] = c.tool_calls
        body: dict[str, Any] = {
            "id": self._answer_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": c.finish_reason}],
        }
        if c.usage:
            body["usage"] = {
                "prompt_tokens": c.usage.prompt_tokens,
                "completion_tokens": c.usage.completion_tokens,
                "total_tokens": c.usage.total_tokens,
            }
        return body

    def _chain_failed(self, channel: Channel, e: ChainFailed) -> tuple[int, bytes]:
        if e.nothing_tried:
            disabled = [f"{p} ({_why_off(self.settings, p)})" for p in channel.skipped]
            open_ = [p for p, what in e.attempts if "circuit open" in what]
            why = f"No provider of channel '{channel.name}' is available"
            why += f"; circuit open: {', '.join(open_)}" if open_ else ""
            why += f"; disabled: {', '.join(disabled)}" if disabled else ""
            return 503, error_body(why, "server_error", code="no_provider_available")
        return 502, error_body(str(e), "server_error", code="all_providers_failed")

    async def _stream(
        self,
        channel: Channel,
        req: ChatRequest,
        record: list[Message],
        usage: bool,
        grant: Grant,
        key_name: str,
        receive: Receive,
        send: Send,
        trace: Trace,
    ) -> None:
        outcome = Outcome()
        source = self.engine.stream(channel, req, outcome)
        trace.stream = True
        # the first delta decides the provider (failover happens here, before any byte is sent)
        first = await anext(source, None)
        trace.provider, trace.failover = outcome.provider, outcome.provider != channel.providers[0]
        headers = [
            *SSE_HEAD,
            (b"x-switchboard-provider", outcome.provider.encode()),
            (b"x-request-id", trace.request_id().encode()),
        ]
        seen = Seen()
        trace.status = 200
        try:
            body = self._sse(channel.name, source, first, req, record, usage, seen, trace)
            await send_stream(receive, send, headers, body)
        finally:  # charged when the stream ends, also when the client left or it broke off
            text = "".join(seen.text)
            await grant.finish(seen.usage, text)
            if outcome.provider:
                trace.tokens = self.engine.usage.note(
                    channel=channel.name,
                    provider=outcome.provider,
                    model=outcome.model,
                    key=key_name,
                    usage=seen.usage,
                    prompt=req.messages,
                    answer=text,
                )
                if self.view.settings.raw.server.log_content:
                    trace.content = (_last_user_text(req), text)

    async def _sse(
        self,
        model: str,
        source: AsyncIterator[Delta],
        first: Delta | None,
        req: ChatRequest,
        record: list[Message],
        include_usage: bool,
        seen: Seen,
        trace: Trace,
    ) -> AsyncIterator[bytes]:
        head = {
            "id": self._answer_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        # Every chunk is `prefix + delta + middle + finish_reason + suffix`: the constant parts are
        # encoded once per stream, only the delta is encoded per chunk.
        prefix = b"data: " + orjson.dumps(head)[:-1] + b',"choices":[{"index":0,"delta":'
        null_end = b',"finish_reason":null}]}\n\n'

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            end = null_end if finish is None else b',"finish_reason":' + orjson.dumps(finish) + b"}]}\n\n"
            return prefix + orjson.dumps(delta) + end

        text = seen.text
        finish, usage_seen = None, None
        # The role chunk rides along with the first piece, and the closing chunks go out together:
        # fewer writes, same events.
        out = chunk({"role": "assistant", "content": ""})
        try:
            d = first
            while d is not None:
                if d.replace:
                    text[:] = [d.text]
                    finish = "content_filter"
                    out += chunk({"content": d.text})
                elif d.text:
                    text.append(d.text)
                    out += chunk({"content": d.text})
                if d.tool_calls:
                    out += chunk({"tool_calls": d.tool_calls})
                if d.finish_reason:
                    finish = finish or d.finish_reason
                if d.usage:
                    usage_seen = seen.usage = d.usage
                if out:
                    if not trace.first_byte:
                        trace.first_byte = time.monotonic()  # time to first token: sent right after this
                    yield out
                    out = b""
                d = await anext(source, None)
        except StreamInterrupted as e:
            err = {
                "error": {
                    "message": f"The answer was cut off: {e}",
                    "type": "server_error",
                    "param": None,
                    "code": "stream_interrupted",
                }
            }
            yield out + b"data: " + orjson.dumps(err) + b"\n\n"
            return
        finally:
            await source.aclose()  # type: ignore[attr-defined]
        out += chunk({}, finish or "stop")
        if include_usage:
            u = usage_seen
            usage = {
                "prompt_tokens": u.prompt_tokens if u else 0,
                "completion_tokens": u.completion_tokens if u else 0,
                "total_tokens": u.total_tokens if u else 0,
            }
            out += b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n"
        yield out + b"data: [DONE]\n\n"
        if record:
            await self.engine.record(req.conversation, record, "".join(text))

    async def models(self, request: Request) -> Response:
        view = self.view
        try:
            _, key = self._auth(_authorization(request), view)
        except RequestError as e:
            self.refused(e.status, e.code, None)
            return error_response(e.status, e.message, "invalid_request_error", code=e.code)
        data = [self._model(c) for c in view.offered if key.allows(c.name)]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type=JSON_TYPE)

    async def model(self, request: Request) -> Response:
        view = self.view
        try:
            _, key = self._auth(_authorization(request), view)
            channel = self._channel(key, request.path_params["model"], view)
            if not channel.providers:
                raise self._not_offered(channel)
        except RequestError as e:
            self.refused(e.status, e.code, e.param)
            return error_response(e.status, e.message, "invalid_request_error", param=e.param, code=e.code)
        return Response(orjson.dumps(self._model(channel)), media_type=JSON_TYPE)

    def _not_offered(self, channel: Channel) -> RequestError:
        why = ", ".join(f"{p} ({_why_off(self.settings, p)})" for p in channel.skipped)
        return RequestError(
            f"The model '{channel.name}' is not offered: the channel has no enabled provider (disabled: {why}).",
            status=404,
            param="model",
            code="model_not_found",
        )

    def _model(self, c: Channel) -> dict[str, Any]:
        return {"id": c.name, "object": "model", "created": self.created, "owned_by": "switchboard"}


class Seen:
    """What a stream carried, for charging it to token budgets when it ends."""

    __slots__ = ("text", "usage")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.usage: Usage | None = None


def over_limit(e: OverLimit) -> tuple[bytes, tuple[tuple[bytes, bytes], ...]]:
    """429 in OpenAI's error JSON with `Retry-After` (whole seconds, at least 1)."""
    body = error_body(str(e), "rate_limit_error", code=e.code)
    return body, (*JSON_HEAD, (b"retry-after", b"%d" % max(1, math.ceil(e.retry_after))))


def rejected(e: RequestRejected) -> tuple[int, bytes]:
    """The upstream's verdict on the caller's request, in OpenAI's error JSON: its status (400,
    413 or 422), its message (our keys already masked), its code and param when it gave them."""
    status = e.status if e.status in CALLER_STATUSES else 400
    message = f"The backend rejected the request: {e.message}"
    return status, error_body(message, "invalid_request_error", param=e.param, code=e.code or "upstream_rejected")


def _why_off(settings: Settings, provider: str) -> str | None:
    """Why a channel's provider is disabled (a channel of a config a reload replaced may name one
    the current config no longer has)."""
    a = settings.providers.get(provider)
    return a.disabled if a is not None else "removed by a config reload"


def _authorization(request: Request) -> bytes | None:
    value = request.headers.get("authorization")
    return value.encode("latin-1") if value is not None else None


def _last_user_text(req: ChatRequest) -> str:
    return next((m.text() for m in reversed(req.messages) if m.role == "user"), "")
