"""What every chat dialect's front door shares: auth, routing, limits, the answer, the log line.

A dialect (`openai_chat.py`, `anthropic.py`) subclasses `ChatDoor` and supplies only its wire
format: `turn` (its request body → a `Turn` of core messages and parameters), `completion_body`
(a `Completion` → its response JSON), `encoder` (a `StreamEncoder` turning the core's deltas into
its event stream) and `error_body` (its error JSON). The flow is here once: the request id, the
API key, the channel named by the request's model, the stored conversation, limits, failover
through the engine, usage, metrics and one log line per request.

A door instance is the ASGI app of its endpoint (`POST /v1/chat/completions`, `POST
/v1/messages`): no Starlette Request/Response objects on the way (the OpenAI one is the hot path).
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
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
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

JSON_HEAD = ((b"content-type", b"application/json"),)
#: A 408 (the body was too slow) closes the connection: the rest of the body is not worth reading.
CLOSE_HEAD = (*JSON_HEAD, (b"connection", b"close"))
#: A 503 for a store that is down: clients that honour Retry-After come back a little later.
STORE_DOWN_HEAD = (*JSON_HEAD, (b"retry-after", b"5"))
SSE_HEAD = ((b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"))
#: API sessions live under this door name in conversation keys, whichever dialect they speak.
API_DOOR = "openai"

#: Told of every refused request: its status, our reason code (None: invalid request) and the
#: offending field. Called on the refusal paths only.
Refused = Callable[[int, str | None, str | None], None]


def _not_counted(status: int, reason: str | None, param: str | None) -> None:
    return None


def digest(key: str | bytes) -> str:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


class Trace(Event):
    """One API request as its log line tells it: filled in as the request goes, logged as it is
    (its fields are built by the log writer, off the event loop)."""

    __slots__ = (
        "channel",
        "content",
        "door",
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

    def __init__(self, door: str = "openai") -> None:
        self.door = door
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
        finished(self.door, self.channel, outcome, self.latency, ttft, self.failover)

    def __str__(self) -> str:  # `render(self.event, self.fields())`, in a third of the time
        out = f"request request_id={self.id} door={self.door}"
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
            "door": self.door,
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


@dataclass(slots=True)
class Turn:
    """A dialect's request, in the core's terms."""

    messages: list[Message]
    params: dict[str, Any]
    stream: bool = False
    #: The caller's session name (a header or a user field): context is kept per (key, channel, session).
    session: str | None = None
    #: OpenAI's `stream_options.include_usage` (other dialects always report usage).
    include_usage: bool = False
    #: A stored exchange this one continues (the Responses API's `previous_response_id`): its
    #: messages are put in front of `messages` (`ChatDoor.earlier`).
    previous: str | None = None
    #: Store this exchange under this id when it ends (`ChatDoor.keep`); None: nothing stored.
    keep_as: str | None = None
    #: Leading messages of `messages` not stored with it (per-request instructions).
    lead: int = 0
    #: The dialect's own request details its encoder needs.
    extra: Any = None
    #: The caller's key name (set once the key is known).
    owner: str = ""
    #: The providers to try when not all of the channel's can serve the request (tools).
    chain: list[str] | None = None


class StreamEncoder:
    """Turns the core's deltas into one dialect's event stream. Each method returns the bytes to
    send (possibly empty); `seen` is what the stream carried so far. A dialect that lets its
    caller stop an answer sets `stopped`: the stream then ends as if the answer had."""

    stopped = False

    def start(self) -> bytes:
        return b""

    def text(self, text: str) -> bytes:
        raise NotImplementedError

    def tools(self, calls: list[dict[str, Any]]) -> bytes:
        raise NotImplementedError

    def end(self, finish: str, seen: Seen) -> bytes:
        raise NotImplementedError

    def cut_off(self, message: str) -> bytes:
        raise NotImplementedError


class Seen:
    """What a stream carried: for charging it to token budgets and usage when it ends (and,
    when the exchange is stored, its tool calls, as the fragments arrived)."""

    __slots__ = ("calls", "text", "usage")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.usage: Usage | None = None
        self.calls: list[dict[str, Any]] = []


def merged_calls(fragments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Streamed tool-call fragments (OpenAI's chunk shape: `index`, then `id`/`name` once and
    `arguments` in pieces) → whole calls, in index order."""
    calls: dict[int, dict[str, Any]] = {}
    for n, f in enumerate(fragments):
        at = f.get("index", n)
        function = f.get("function") or {}
        call = calls.setdefault(at, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        if f.get("id"):
            call["id"] = f["id"]
        if function.get("name"):
            call["function"]["name"] = function["name"]
        args = function.get("arguments")
        if args:
            call["function"]["arguments"] += args if isinstance(args, str) else orjson.dumps(args).decode()
    return [calls[i] for i in sorted(calls)]


class DoorView:
    """What a front door reads from one config, prepared once per config (at start-up and on
    each reload). A request reads `door.view` once and keeps it: a reload swaps the reference."""

    __slots__ = ("keys", "offered", "settings")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.offered = tuple(c for c in settings.channels if c.providers)
        self.keys: dict[str, tuple[str, KeyConfig]] = {
            digest(k.key): (k.name or digest(k.key)[:12], k) for k in settings.raw.keys
        }


class ChatDoor:
    """The flow of a chat request through any dialect (see the module docstring)."""

    #: The door's name in metrics and log lines.
    door: ClassVar[str] = "openai"
    #: Request headers read (lower-case).
    wanted: ClassVar[frozenset[bytes]] = frozenset(
        {b"authorization", b"content-length", b"x-conversation-id", b"x-request-id"}
    )
    id_prefix: ClassVar[str] = "chatcmpl-"

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
        self._id_prefix = self.id_prefix + secrets.token_hex(8)
        self._ids = itertools.count(1)

    @property
    def settings(self) -> Settings:
        """The config new requests use (a reload replaces it)."""
        return self.view.settings

    def use(self, settings: Settings) -> None:
        """A reload: requests from now on use `settings`; those in flight keep their view."""
        self.view = DoorView(settings)

    # -- the dialect ---------------------------------------------------------------------------

    def api_key(self, headers: Mapping[bytes, bytes]) -> bytes | None:
        """The caller's API key from the request headers (`Authorization: Bearer …`)."""
        scheme, _, token = (headers.get(b"authorization") or b"").partition(b" ")
        return token.strip() if scheme.lower() == b"bearer" else None

    def turn(self, data: dict[str, Any], headers: Mapping[bytes, bytes]) -> Turn:
        raise NotImplementedError

    def completion_body(self, model: str, c: Completion, tokens: tuple[int, int, bool], turn: Turn) -> bytes:
        raise NotImplementedError

    def encoder(self, model: str, turn: Turn, req: ChatRequest) -> StreamEncoder:
        raise NotImplementedError

    def error_body(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> bytes:
        raise NotImplementedError

    async def earlier(self, previous: str, turn: Turn) -> list[Message]:
        """The stored messages `turn.previous` names (dialects that continue stored exchanges)."""
        raise NotImplementedError

    async def keep(self, turn: Turn, text: str, calls: list[dict[str, Any]] | None) -> None:
        """Store the exchange under `turn.keep_as` (dialects that continue stored exchanges)."""
        raise NotImplementedError

    def over_limit_head(self, e: OverLimit) -> tuple[tuple[bytes, bytes], ...]:
        return (*JSON_HEAD, (b"retry-after", b"%d" % max(1, math.ceil(e.retry_after))))

    # -- helpers -----------------------------------------------------------------------------

    def _auth(self, token: bytes | None, view: DoorView) -> tuple[str, KeyConfig]:
        # looked up by the SHA-256 of the token, so no comparison ever runs on the secret itself
        found = view.keys.get(digest(token)) if token else None
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

    def answer_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"

    async def _build(
        self, scope: Scope, receive: Receive, trace: Trace
    ) -> tuple[Channel, ChatRequest, list[Message], Turn, Grant, str]:
        view, headers, key_name, data, channel = await self.preamble(scope, receive, trace)
        turn = self.turn(data, headers)
        turn.owner = key_name
        if turn.previous is not None:
            earlier = await self.earlier(turn.previous, turn)
            turn.messages[turn.lead : turn.lead] = earlier
            turn.lead += len(earlier)  # stored with the next exchange, not again with this one
        messages, session = turn.messages, turn.session
        conversation, stateless, record = "", False, []
        if session:
            conversation = conversation_of(channel.name, API_DOOR, key_name, session)
            stateless = not any(m.role == "assistant" for m in messages)
            if stateless:
                record = [m for m in messages if m.role not in ("system", "developer")]
        req = await self.engine.request(
            channel,
            messages,
            conversation=conversation,
            with_history=stateless,
            user=f"{key_name}:{session}" if session else key_name,
            params=turn.params,
            stream=turn.stream,
        )
        if req.params.get("tools"):
            turn.chain = self._able(channel, "uses_tools", "use tools", "tools")
        if any(m.content.__class__ is list for m in messages) and _has_images(messages):
            able = self._able(channel, "sees_images", "take images", "messages")
            turn.chain = able if turn.chain is None or able is None else [p for p in turn.chain if p in able]
            if turn.chain == []:
                raise RequestError(
                    f"no provider of channel '{channel.name}' can take both tools and images.", param="messages"
                )
        limits = view.settings.limits
        grant = await self._admit(limits, key_name, channel, req) if limits.active else NO_GRANT
        return channel, req, record, turn, grant, key_name

    def _able(self, channel: Channel, capability: str, what: str, param: str) -> list[str] | None:
        """The channel's providers that can serve a feature of this request; a 400 naming the
        others when none can (a channel with no enabled provider fails as usual: 503)."""
        if not channel.providers:
            return None
        try:
            return self.engine.able(channel, capability, what)
        except ValueError as e:
            raise RequestError(f"{e}.", param=param, code="unsupported_by_provider") from None

    def identify(self, scope: Scope, trace: Trace, view: DoorView) -> tuple[Mapping[bytes, bytes], str, KeyConfig]:
        """The request's headers this door reads, its id (set for the log lines), and its key."""
        headers = header_map(scope, self.wanted)
        trace.id = request_id(headers.get(b"x-request-id"))
        REQUEST_ID.set(trace.id)
        key_name, key = self._auth(self.api_key(headers), view)
        trace.key = key_name
        return headers, key_name, key

    async def preamble(
        self, scope: Scope, receive: Receive, trace: Trace
    ) -> tuple[DoorView, Mapping[bytes, bytes], str, dict[str, Any], Channel]:
        """What every endpoint of a door starts with: the request id, the key, the JSON body and
        the channel its `model` names, read from this request's config view (whatever a reload
        does meanwhile). Raises `RequestError`."""
        view = self.view
        headers, key_name, key = self.identify(scope, trace, view)
        body = await read_body(receive, self.max_body, headers.get(b"content-length"), self.body_timeout)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise RequestError("We could not parse the JSON body of your request.") from None
        if not isinstance(data, dict):
            raise RequestError("The request body must be a JSON object.")
        channel = self._channel(key, data.get("model"), view)
        trace.channel = channel.name
        return view, headers, key_name, data, channel

    async def _admit(self, limits: Limits, key_id: str, channel: Channel, req: ChatRequest | None) -> Grant:
        """The key's and the channel's limits (the last step of `_build`: nothing after it
        raises, so the caller always gets the grant to release). Raises `OverLimit`."""
        key, chan = limits.key_targets.get(key_id), limits.channel_targets.get(channel.name)
        targets = (key, chan) if key and chan else (key,) if key else (chan,) if chan else ()
        if not targets:
            return NO_GRANT
        grant = await self.engine.limiter.admit(targets, limits.slot_lease)
        if req is not None:
            grant.prompt = req.messages
        return grant

    # -- the endpoint ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Never raises to the server: every failure is the dialect's error JSON (or, once a
        stream has started, an error event in it)."""
        trace = Trace(self.door)
        try:
            await self.chat(scope, receive, send, trace)
        except ClientGone:
            trace.status = trace.status or 499
        except StoreUnavailable as e:
            self.engine.store_failed(self.door)
            log.warning("%s request refused: %s", self.door, e)
            message = "Switchboard's store is unavailable, so the request cannot be served now; try again shortly."
            body = self.error_body(503, message, code="store_unavailable")
            with contextlib.suppress(Exception):  # fails harmlessly if the response had started
                await trace.reply(send, 503, body, STORE_DOWN_HEAD)
        except Exception:
            log.exception("%s request failed", self.door)
            body = self.error_body(500, "Internal error in Switchboard; see its log.", code="internal_error")
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

    async def chat(self, scope: Scope, receive: Receive, send: Send, trace: Trace) -> None:
        try:
            channel, req, record, turn, grant, key_name = await self._build(scope, receive, trace)
        except RequestError as e:
            self.refused(e.status, e.code, e.param)
            body = self.error_body(e.status, e.message, param=e.param, code=e.code)
            return await trace.reply(send, e.status, body, CLOSE_HEAD if e.status == 408 else JSON_HEAD)
        except OverLimit as e:
            return await trace.reply(send, 429, self.error_body(429, str(e), code=e.code), self.over_limit_head(e))
        if grant is NO_GRANT:
            return await self._answer(channel, req, record, turn, grant, key_name, receive, send, trace)
        try:
            await self._answer(channel, req, record, turn, grant, key_name, receive, send, trace)
        finally:
            await grant.release()  # nothing when the answer already charged it

    async def _answer(
        self,
        channel: Channel,
        req: ChatRequest,
        record: list[Message],
        turn: Turn,
        grant: Grant,
        key_name: str,
        receive: Receive,
        send: Send,
        trace: Trace,
    ) -> None:
        try:
            if req.stream:
                return await self._stream(channel, req, record, turn, grant, key_name, receive, send, trace)
            provider, result = await self.engine.complete(channel, req, turn.chain)
            trace.provider, trace.failover = provider, provider != channel.providers[0]
        except RequestRejected as e:
            status, message = rejected(e)
            self.refused(status, UPSTREAM, e.param)
            body = self.error_body(status, message, param=e.param, code=e.code or "upstream_rejected")
            return await trace.reply(send, status, body, JSON_HEAD)
        except ChainFailed as e:
            status, message, code = self._chain_failed(channel, e)
            return await trace.reply(send, status, self.error_body(status, message, code=code), JSON_HEAD)
        if record:
            await self.engine.record(req.conversation, record, result.text)
        trace.tokens = tokens = self.engine.usage.note(
            channel=channel.name,
            provider=provider,
            model=result.model or req.model,
            key=key_name,
            usage=result.usage,
            prompt=req.messages,
            answer=result.text,
        )
        if turn.keep_as is not None:
            await self.keep(turn, result.text, result.tool_calls)
        body = self.completion_body(channel.name, result, tokens, turn)
        await trace.reply(send, 200, body, (*JSON_HEAD, (b"x-switchboard-provider", provider.encode())))
        await grant.finish(result.usage, result.text)
        if self.view.settings.raw.server.log_content:
            trace.content = (last_user_text(req), result.text)

    def _chain_failed(self, channel: Channel, e: ChainFailed) -> tuple[int, str, str]:
        if e.nothing_tried:
            disabled = [f"{p} ({why_off(self.settings, p)})" for p in channel.skipped]
            open_ = [p for p, what in e.attempts if "circuit open" in what]
            why = f"No provider of channel '{channel.name}' is available"
            why += f"; circuit open: {', '.join(open_)}" if open_ else ""
            why += f"; disabled: {', '.join(disabled)}" if disabled else ""
            return 503, why, "no_provider_available"
        return 502, str(e), "all_providers_failed"

    async def _stream(
        self,
        channel: Channel,
        req: ChatRequest,
        record: list[Message],
        turn: Turn,
        grant: Grant,
        key_name: str,
        receive: Receive,
        send: Send,
        trace: Trace,
    ) -> None:
        outcome = Outcome()
        source = self.engine.stream(channel, req, outcome, turn.chain)
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
            body = self._events(self.encoder(channel.name, turn, req), source, first, req, record, seen, trace, turn)
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
                    trace.content = (last_user_text(req), text)

    async def _events(
        self,
        encoder: StreamEncoder,
        source: AsyncIterator[Delta],
        first: Delta | None,
        req: ChatRequest,
        record: list[Message],
        seen: Seen,
        trace: Trace,
        turn: Turn,
    ) -> AsyncIterator[bytes]:
        """The answer as the dialect's events, written as the deltas arrive. The opening events
        ride along with the first piece and the closing ones go out together: fewer writes, the
        same events."""
        text = seen.text
        finish = None
        out = encoder.start()
        try:
            d = first
            while d is not None:
                if d.replace:
                    text[:] = [d.text]
                    finish = "content_filter"
                    out += encoder.text(d.text)
                elif d.text:
                    text.append(d.text)
                    out += encoder.text(d.text)
                if d.tool_calls:
                    out += encoder.tools(d.tool_calls)
                    seen.calls.extend(d.tool_calls)
                if d.finish_reason:
                    finish = finish or d.finish_reason
                if d.usage:
                    seen.usage = d.usage
                if out:
                    if not trace.first_byte:
                        trace.first_byte = time.monotonic()  # time to first token: sent right after this
                    yield out
                    out = b""
                d = None if encoder.stopped else await anext(source, None)
        except StreamInterrupted as e:
            yield out + encoder.cut_off(f"The answer was cut off: {e}")
            return
        finally:
            await source.aclose()  # type: ignore[attr-defined]
        if turn.keep_as is not None:  # stored before the end is sent: a quick follow-up finds it
            await self.keep(turn, "".join(text), merged_calls(seen.calls) or None)
        yield out + encoder.end(finish or "stop", seen)
        if record:
            await self.engine.record(req.conversation, record, "".join(text))


def _has_images(messages: list[Message]) -> bool:
    return any(isinstance(m.content, list) and any(p.get("type") == "image_url" for p in m.content) for m in messages)


def rejected(e: RequestRejected) -> tuple[int, str]:
    """The upstream's verdict on the caller's request: its status (400, 413 or 422) and its
    message (our keys already masked)."""
    status = e.status if e.status in CALLER_STATUSES else 400
    return status, f"The backend rejected the request: {e.message}"


def why_off(settings: Settings, provider: str) -> str | None:
    """Why a channel's provider is disabled (a channel of a config a reload replaced may name one
    the current config no longer has)."""
    a = settings.providers.get(provider)
    return a.disabled if a is not None else "removed by a config reload"


def last_user_text(req: ChatRequest) -> str:
    return next((m.text() for m in reversed(req.messages) if m.role == "user"), "")


def json_type(value: Any) -> str:
    names = {dict: "object", list: "array", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
