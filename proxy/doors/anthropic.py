"""The Anthropic Messages front door: POST /v1/messages and POST /v1/messages/count_tokens.

A bot written for the Anthropic API points its base URL at Switchboard and sends a Switchboard
key (`x-api-key`, or `Authorization: Bearer`); `model` names a channel, as with the OpenAI door,
and the channel's providers answer whatever they speak.

Translated both ways (the core speaks OpenAI's shapes internally):
- `system` (a string or text blocks) → a system message; `messages` with text, image (base64 and
  URL sources), `tool_use` and `tool_result` blocks → user/assistant/tool messages with content
  parts and `tool_calls`; `thinking` blocks from an earlier answer are dropped (no backend
  behind an OpenAI-shaped chain can take them back).
- `max_tokens`, `temperature`, `top_p`, `stop_sequences`, `tools` (`input_schema` →
  `parameters`), `tool_choice` (auto / any / tool / none) → OpenAI parameters;
  `metadata.user_id` (or `X-Conversation-Id`) names the session whose context Switchboard keeps.
- The answer: text and `tool_use` blocks, `stop_reason` (end_turn, max_tokens, tool_use,
  refusal) and `usage` (the upstream's figures, else estimates); streamed as Anthropic's event
  sequence: `message_start`, `ping`, `content_block_start` / `_delta` (`text_delta`,
  `input_json_delta`) / `_stop` per block, `message_delta` with the stop reason and usage,
  `message_stop`, or an `error` event when the answer is cut off.
- Errors: `{"type": "error", "error": {"type": ..., "message": ...}}` with the same status
  codes the OpenAI door uses for the same causes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from proxy.doors.chat import JSON_HEAD, ChatDoor, Seen, StreamEncoder, Trace, Turn, json_type
from proxy.errors import RequestError
from proxy.http_util import ClientGone
from proxy.logs import REQUEST_ID
from proxy.types import ChatRequest, Completion, Message
from proxy.usage import estimate, estimate_prompt

#: Anthropic's error `type` per status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
#: Request fields translated here; anything else is refused by name (a typo must not pass silently).
KNOWN = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "tools",
        "tool_choice",
        "metadata",
        # Anthropic-side options no OpenAI-shaped backend takes: accepted and not passed on.
        "thinking",
        "service_tier",
        "container",
        "mcp_servers",
        "cache_control",
        "diagnostics",
        "inference_geo",
        "output_config",
        "speed",
        "user_profile_id",
        "workspace_id",
    }
)


def error_body(status: int, message: str) -> bytes:
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def _field(path: str, message: str) -> RequestError:
    return RequestError(f"{path}: {message}", param=path)


def _text_of(blocks: Any, path: str) -> str:
    """A string, or text blocks joined (for `system` and tool results)."""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise _field(path, f"must be a string or an array of text blocks, not a JSON {json_type(blocks)}")
    out = []
    for i, b in enumerate(blocks):
        if not isinstance(b, dict) or b.get("type") != "text" or not isinstance(b.get("text"), str):
            raise _field(f"{path}.{i}", "must be a text block ({'type': 'text', 'text': '...'})")
        out.append(b["text"])
    return "\n".join(out)


def _image(block: dict[str, Any], path: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _field(f"{path}.source", "is required: an object with a type of base64 or url")
    kind = source.get("type")
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not media.startswith("image/"):
            raise _field(f"{path}.source.media_type", "must be an image type such as image/png")
        if not isinstance(data, str) or not data:
            raise _field(f"{path}.source.data", "must be the base64 image data")
        url = f"data:{media};base64,{data}"
    elif kind == "url":
        given = source.get("url")
        if not isinstance(given, str) or not given:
            raise _field(f"{path}.source.url", "must be the image's URL")
        url = given
    else:
        raise _field(f"{path}.source.type", f"must be base64 or url, not {kind!r}"[:120])
    return {"type": "image_url", "image_url": {"url": url}}


def _messages(raw: Any) -> list[Message]:
    """Anthropic messages → the core's (OpenAI-shaped) messages."""
    if not isinstance(raw, list) or not raw:
        raise _field("messages", "must be a non-empty array of message objects")
    out: list[Message] = []
    for i, m in enumerate(raw):
        path = f"messages.{i}"
        if not isinstance(m, dict):
            raise _field(path, "must be an object with a role and content")
        role, content = m.get("role"), m.get("content")
        if role not in ("user", "assistant"):
            raise _field(f"{path}.role", f"must be user or assistant, not {role!r}"[:120])
        if isinstance(content, str):
            out.append(Message(role, content))
            continue
        if not isinstance(content, list):
            raise _field(f"{path}.content", "must be a string or an array of content blocks")
        parts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        results: list[Message] = []
        for j, b in enumerate(content):
            bpath = f"{path}.content.{j}"
            kind = b.get("type") if isinstance(b, dict) else None
            if not isinstance(b, dict) or not isinstance(kind, str):
                raise _field(bpath, "must be a content block object with a type")
            if kind == "text":
                if not isinstance(b.get("text"), str):
                    raise _field(f"{bpath}.text", "must be a string")
                parts.append({"type": "text", "text": b["text"]})
            elif kind == "image":
                if role != "user":
                    raise _field(bpath, "image blocks are only allowed in user messages")
                parts.append(_image(b, bpath))
            elif kind == "tool_use":
                if role != "assistant":
                    raise _field(bpath, "tool_use blocks are only allowed in assistant messages")
                tid, name, args = b.get("id"), b.get("name"), b.get("input", {})
                if not isinstance(tid, str) or not tid or not isinstance(name, str) or not name:
                    raise _field(bpath, "a tool_use block needs a string id and name")
                if not isinstance(args, dict):
                    raise _field(f"{bpath}.input", "must be an object")
                call = {"name": name, "arguments": orjson.dumps(args).decode()}
                calls.append({"id": tid, "type": "function", "function": call})
            elif kind == "tool_result":
                if role != "user":
                    raise _field(bpath, "tool_result blocks are only allowed in user messages")
                tid = b.get("tool_use_id")
                if not isinstance(tid, str) or not tid:
                    raise _field(f"{bpath}.tool_use_id", "must be the id of the tool_use it answers")
                text = _text_of(b.get("content", ""), f"{bpath}.content")
                if b.get("is_error"):
                    text = f"Error: {text}"
                results.append(Message("tool", text, {"tool_call_id": tid}))
            elif kind in ("thinking", "redacted_thinking"):
                continue
            else:
                raise _field(f"{bpath}.type", f"content blocks of type {kind!r} are not supported"[:120])
        out.extend(results)  # tool results answer the previous assistant turn: they come first
        if role == "assistant":
            text = "".join(p["text"] for p in parts)
            if text or calls:
                out.append(Message("assistant", text or None, {"tool_calls": calls} if calls else None))
        elif parts:
            simple = all(p["type"] == "text" for p in parts)
            out.append(Message("user", "".join(p["text"] for p in parts) if simple else parts))
    return out


def _tools(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise _field("tools", "must be an array of tool definitions")
    out = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not t["name"]:
            raise _field(f"tools.{i}", "must be an object with a name and an input_schema")
        schema = t.get("input_schema")
        if not isinstance(schema, dict):
            raise _field(f"tools.{i}.input_schema", "must be a JSON schema object")
        function: dict[str, Any] = {"name": t["name"], "parameters": schema}
        if isinstance(t.get("description"), str):
            function["description"] = t["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(raw: Any) -> Any:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool" and isinstance(raw.get("name"), str):
        return {"type": "function", "function": {"name": raw["name"]}}
    raise _field("tool_choice", "must be {'type': 'auto' | 'any' | 'none'} or {'type': 'tool', 'name': ...}")


def parse(data: dict[str, Any], headers: Mapping[bytes, bytes]) -> Turn:
    unknown = sorted(k for k in data if k not in KNOWN)
    if unknown:
        raise _field(unknown[0], "Extra inputs are not permitted")
    messages = _messages(data.get("messages"))
    system = data.get("system")
    if system is not None:
        messages.insert(0, Message("system", _text_of(system, "system")))
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise _field("stream", "must be a boolean")
    params: dict[str, Any] = {}
    max_tokens = data.get("max_tokens")
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise _field("max_tokens", "must be a positive integer")
        params["max_tokens"] = max_tokens
    for name in ("temperature", "top_p"):
        value = data.get(name)
        if value is not None:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise _field(name, "must be a number")
            params[name] = value
    stops = data.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _field("stop_sequences", "must be an array of strings")
        if stops:
            params["stop"] = stops
    if data.get("tools"):
        params["tools"] = _tools(data["tools"])
    if data.get("tool_choice") is not None:
        params["tool_choice"] = _tool_choice(data["tool_choice"])
    metadata = data.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _field("metadata", "must be an object")
    user = (metadata or {}).get("user_id")
    if user is not None and not isinstance(user, str):
        raise _field("metadata.user_id", "must be a string")
    named = headers.get(b"x-conversation-id")
    return Turn(messages, params, stream, named.decode("latin-1") if named else user)


def _input(arguments: Any) -> Any:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = orjson.loads(arguments or "{}")
    except (orjson.JSONDecodeError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def _event(name: bytes, data: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class MessageEncoder(StreamEncoder):
    """Anthropic's event stream: one content block per run of text or per tool call."""

    def __init__(self, message_id: str, model: str, input_tokens: int) -> None:
        self.id, self.model, self.input_tokens = message_id, model, input_tokens
        self.index = -1  # the open block's index
        self.open: str | None = None  # "text", or the core's tool-call index of the open tool_use block
        self.tools_seen: dict[int, int] = {}

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }
        return _event(b"message_start", {"type": "message_start", "message": message}) + _event(
            b"ping", {"type": "ping"}
        )

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return _event(b"content_block_stop", {"type": "content_block_stop", "index": self.index})

    def text(self, text: str) -> bytes:
        out = b""
        if self.open != "text":
            out = self._close()
            self.index += 1
            self.open = "text"
            block = {"type": "content_block_start", "index": self.index, "content_block": {"type": "text", "text": ""}}
            out += _event(b"content_block_start", block)
        delta = {"type": "content_block_delta", "index": self.index, "delta": {"type": "text_delta", "text": text}}
        return out + _event(b"content_block_delta", delta)

    def tools(self, calls: list[dict[str, Any]]) -> bytes:
        out = b""
        for n, call in enumerate(calls):
            at = call.get("index", n)
            function = call.get("function") or {}
            if at not in self.tools_seen:  # a new call: its own tool_use block
                out += self._close()
                self.index += 1
                self.tools_seen[at] = self.index
                self.open = f"tool{at}"
                block: dict[str, Any] = {
                    "type": "tool_use",
                    "id": call.get("id") or f"toolu_{self.id}_{at}",
                    "name": function.get("name") or "",
                    "input": {},
                }
                start = {"type": "content_block_start", "index": self.index, "content_block": block}
                out += _event(b"content_block_start", start)
            elif self.open != f"tool{at}":  # fragments of a call whose block was closed: not expected
                continue
            args = function.get("arguments")
            if isinstance(args, dict):
                args = orjson.dumps(args).decode()
            if args:
                delta = {"type": "input_json_delta", "partial_json": args}
                out += _event(
                    b"content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta}
                )
        return out

    def end(self, finish: str, seen: Seen) -> bytes:
        u = seen.usage
        usage = {"output_tokens": u.completion_tokens if u else estimate("".join(seen.text))}
        if u:
            usage["input_tokens"] = u.prompt_tokens
        stop = {"stop_reason": STOP_REASONS.get(finish, "end_turn"), "stop_sequence": None}
        out = self._close()
        out += _event(b"message_delta", {"type": "message_delta", "delta": stop, "usage": usage})
        return out + _event(b"message_stop", {"type": "message_stop"})

    def cut_off(self, message: str) -> bytes:
        return _event(b"error", {"type": "error", "error": {"type": "api_error", "message": message}})


class AnthropicDoor(ChatDoor):
    """`POST /v1/messages` (this instance is its ASGI app) and `count_tokens`."""

    door = "anthropic"
    id_prefix = "msg_"
    wanted = frozenset({b"authorization", b"x-api-key", b"content-length", b"x-conversation-id", b"x-request-id"})

    def api_key(self, headers: Mapping[bytes, bytes]) -> bytes | None:
        key = headers.get(b"x-api-key")
        return key.strip() if key else super().api_key(headers)

    def turn(self, data: dict[str, Any], headers: Mapping[bytes, bytes]) -> Turn:
        return parse(data, headers)

    def completion_body(self, model: str, c: Completion, tokens: tuple[int, int, bool], turn: Turn) -> bytes:
        content: list[dict[str, Any]] = []
        if c.text:
            content.append({"type": "text", "text": c.text})
        for call in c.tool_calls or ():
            function = call.get("function") or {}
            content.append(
                {
                    "type": "tool_use",
                    "id": call.get("id") or f"toolu_{len(content)}",
                    "name": function.get("name") or "",
                    "input": _input(function.get("arguments")),
                }
            )
        finish = "tool_calls" if c.tool_calls and c.finish_reason == "stop" else c.finish_reason
        body = {
            "id": self.answer_id(),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": STOP_REASONS.get(finish, "end_turn"),
            "stop_sequence": None,
            "usage": {"input_tokens": tokens[0], "output_tokens": tokens[1]},
        }
        return orjson.dumps(body)

    def encoder(self, model: str, turn: Turn, req: ChatRequest) -> StreamEncoder:
        return MessageEncoder(self.answer_id(), model, estimate_prompt(req.messages))

    def error_body(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> bytes:
        return error_body(status, message)

    # -- /v1/messages/count_tokens -----------------------------------------------------------

    async def count_tokens(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An estimate of the request's input tokens (what the channel's prompt adds included):
        `{"input_tokens": n}`. The backends behind a channel differ, so this is the same rough
        count usage accounting uses when an upstream reports none."""
        trace = Trace(self.door)
        try:
            _, headers, _, data, channel = await self.preamble(scope, receive, trace)
            turn = parse({k: v for k, v in data.items() if k != "stream"}, headers)
            messages = [Message("system", channel.prompt)] if channel.prompt else []
            tools = len(orjson.dumps(turn.params.get("tools"))) // 4 if turn.params.get("tools") else 0
            count = estimate_prompt([*messages, *turn.messages]) + tools
            await trace.reply(send, 200, orjson.dumps({"input_tokens": count}), JSON_HEAD)
        except ClientGone:
            return
        except RequestError as e:
            self.refused(e.status, e.code, e.param)
            await trace.reply(send, e.status, error_body(e.status, e.message), JSON_HEAD)
        finally:
            REQUEST_ID.set(None)


class CountTokens:
    """The ASGI app of `POST /v1/messages/count_tokens` (a bound method would be taken for a
    request/response endpoint by Starlette's router)."""

    def __init__(self, door: AnthropicDoor) -> None:
        self.door = door

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.door.count_tokens(scope, receive, send)
