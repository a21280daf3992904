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

import time
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.doors.chat import JSON_HEAD, ChatDoor, Seen, StreamEncoder, Trace, Turn, json_type, rejected, why_off
from proxy.errors import ChainFailed, OverLimit, RequestError, RequestRejected
from proxy.refusals import UPSTREAM
from proxy.types import ChatRequest, Completion, Message

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
OWN_FIELDS = frozenset({"model", "messages", "stream", "stream_options", "user", "n"})
JSON_TYPE = "application/json"


def error_body(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def error_type(status: int) -> str:
    """OpenAI's error `type` for a status."""
    return "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"


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


def parse_messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise RequestError("'messages' must be a non-empty array of message objects.", param="messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}] must be an object.", param=f"messages[{i}]")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a list or object is not hashable
            got = repr(role) if isinstance(role, str) else f"a JSON {json_type(role)}"
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


class ChunkEncoder(StreamEncoder):
    """`chat.completion.chunk` events. Every chunk is `prefix + delta + finish_reason + suffix`:
    the constant parts are encoded once per stream, only the delta per chunk; the role rides
    along with the first piece."""

    __slots__ = ("head", "include_usage", "prefix")

    NULL_END = b',"finish_reason":null}]}\n\n'

    def __init__(self, answer_id: str, model: str, include_usage: bool) -> None:
        self.head = {"id": answer_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        self.prefix = b"data: " + orjson.dumps(self.head)[:-1] + b',"choices":[{"index":0,"delta":'
        self.include_usage = include_usage

    def start(self) -> bytes:
        return self.prefix + b'{"role":"assistant","content":""}' + self.NULL_END

    def text(self, text: str) -> bytes:
        return self.prefix + orjson.dumps({"content": text}) + self.NULL_END

    def tools(self, calls: list[dict[str, Any]]) -> bytes:
        return self.prefix + orjson.dumps({"tool_calls": calls}) + self.NULL_END

    def end(self, finish: str, seen: Seen) -> bytes:
        out = self.prefix + b'{},"finish_reason":' + orjson.dumps(finish) + b"}]}\n\n"
        if self.include_usage:
            u = seen.usage
            usage = {
                "prompt_tokens": u.prompt_tokens if u else 0,
                "completion_tokens": u.completion_tokens if u else 0,
                "total_tokens": u.total_tokens if u else 0,
            }
            out += b"data: " + orjson.dumps({**self.head, "choices": [], "usage": usage}) + b"\n\n"
        return out + b"data: [DONE]\n\n"

    def cut_off(self, message: str) -> bytes:
        err = {"error": {"message": message, "type": "server_error", "param": None, "code": "stream_interrupted"}}
        return b"data: " + orjson.dumps(err) + b"\n\n"


class OpenAIFrontDoor(ChatDoor):
    """The OpenAI-compatible API. The instance itself is the ASGI app of
    `POST /v1/chat/completions` (the hot path: no Starlette Request/Response objects).

    `/v1/models` offers only the channels that have an enabled provider."""

    door = "openai"

    def turn(self, data: dict[str, Any], headers: Mapping[bytes, bytes]) -> Turn:
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
        return Turn(messages, params, stream, session, bool(options and options.get("include_usage")))

    def completion_body(self, model: str, c: Completion, tokens: tuple[int, int, bool], turn: Turn) -> bytes:
        message: dict[str, Any] = {"role": "assistant", "content": c.text}
        if c.tool_calls:
            message["tool_calls"] = c.tool_calls
        body: dict[str, Any] = {
            "id": self.answer_id(),
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
        return orjson.dumps(body)

    def encoder(self, model: str, turn: Turn, req: ChatRequest) -> StreamEncoder:
        return ChunkEncoder(self.answer_id(), model, turn.include_usage)

    def error_body(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> bytes:
        return error_body(message, error_type(status), param=param, code=code)

    # -- /v1/models --------------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        view = self.view
        try:
            _, key = self._auth(self.api_key(_wanted(request)), view)
        except RequestError as e:
            self.refused(e.status, e.code, None)
            return error_response(e.status, e.message, "invalid_request_error", code=e.code)
        data = [self._model(c) for c in view.offered if key.allows(c.name)]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type=JSON_TYPE)

    async def model(self, request: Request) -> Response:
        view = self.view
        try:
            _, key = self._auth(self.api_key(_wanted(request)), view)
            channel = self._channel(key, request.path_params["model"], view)
            if not channel.providers:
                why = ", ".join(f"{p} ({why_off(self.settings, p)})" for p in channel.skipped)
                raise RequestError(
                    f"The model '{channel.name}' is not offered: the channel has no enabled provider "
                    f"(disabled: {why}).",
                    status=404,
                    param="model",
                    code="model_not_found",
                )
        except RequestError as e:
            self.refused(e.status, e.code, e.param)
            return error_response(e.status, e.message, "invalid_request_error", param=e.param, code=e.code)
        return Response(orjson.dumps(self._model(channel)), media_type=JSON_TYPE)

    def _model(self, c: Any) -> dict[str, Any]:
        return {"id": c.name, "object": "model", "created": self.created, "owned_by": "switchboard"}


def _wanted(request: Request) -> dict[bytes, bytes]:
    """The headers a door's `api_key` reads, from a Starlette request."""
    return {k.encode("latin-1"): v.encode("latin-1") for k, v in request.headers.items()}


class OpenAICallDoor(ChatDoor):
    """A door for OpenAI's other endpoints (embeddings, images): the chat doors' keys, channels,
    limits, metrics and log line, OpenAI's errors, and one call down the channel's chain that
    `serve` makes. `RequestError` and `OverLimit` raised by `serve` become the error JSON."""

    async def serve(self, scope: Scope, receive: Receive, send: Send, trace: Trace) -> None:
        raise NotImplementedError

    def error_body(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> bytes:
        return error_body(message, error_type(status), param=param, code=code)

    async def chat(self, scope: Scope, receive: Receive, send: Send, trace: Trace) -> None:
        try:
            await self.serve(scope, receive, send, trace)
        except RequestError as e:
            self.refused(e.status, e.code, e.param)
            body = self.error_body(e.status, e.message, param=e.param, code=e.code)
            await trace.reply(send, e.status, body, JSON_HEAD)
        except OverLimit as e:
            await trace.reply(send, 429, self.error_body(429, str(e), code=e.code), self.over_limit_head(e))

    async def call_failed(self, e: Exception, channel: Any, send: Send, trace: Trace) -> None:
        """The answer to a call that failed upstream: the caller's error as the backend said
        it, or the chain's failure (502/503)."""
        if isinstance(e, RequestRejected):
            status, message = rejected(e)
            self.refused(status, UPSTREAM, e.param)
            err = self.error_body(status, message, param=e.param, code=e.code or "upstream_rejected")
            return await trace.reply(send, status, err, JSON_HEAD)
        assert isinstance(e, ChainFailed)
        status, message, code = self._chain_failed(channel, e)
        await trace.reply(send, status, self.error_body(status, message, code=code), JSON_HEAD)
