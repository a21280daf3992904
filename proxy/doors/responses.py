"""The OpenAI Responses door: POST /v1/responses.

For bots written against OpenAI's newer API (`client.responses.create` / `.stream`). `model`
names a channel; the channel's providers answer whatever API they speak.

Translated:
- `input`: a string, or items: messages (`role` user / assistant / system / developer, content a
  string or `input_text` / `input_image` / `output_text` parts), `function_call` and
  `function_call_output` items → the core's messages (image parts become `image_url` parts, calls
  `tool_calls`, outputs `tool` messages). `instructions` → a system message for this request only.
- `tools` (`type: function`, flat `name` / `parameters`) and `tool_choice` → chat tools;
  `max_output_tokens`, `temperature`, `top_p`, `user` passed on.
- The answer: a `message` output item with `output_text`, and a `function_call` item per tool
  call; `usage` (input / output / total tokens), `status` completed (or incomplete with
  `max_output_tokens`). Streams carry `response.created`, `response.in_progress`,
  `response.output_item.added`, `response.content_part.added`, `response.output_text.delta` /
  `.done`, `response.function_call_arguments.delta` / `.done`, `response.content_part.done`,
  `response.output_item.done` and `response.completed` (or `response.failed` when the answer is
  cut off), each with a `sequence_number`.
- `previous_response_id`: every response is stored (unless `store: false`) for `RETENTION`
  seconds with the messages that led to it, for the key that made it; a request naming it
  continues from there (instructions are not carried over, as in OpenAI's API). Another key's
  id, or one that expired, is a 404.
- Errors: OpenAI's error JSON, the same statuses as chat completions.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

import orjson

from proxy.doors.chat import ChatDoor, Seen, StreamEncoder, Turn, json_type
from proxy.doors.openai_chat import error_body, error_type
from proxy.errors import RequestError
from proxy.types import ChatRequest, Completion, Message
from proxy.usage import estimate, estimate_prompt

#: Seconds a stored response can be continued with `previous_response_id` (OpenAI keeps 30 days).
RETENTION = 30 * 86400
KNOWN = frozenset(
    {
        "model",
        "input",
        "instructions",
        "stream",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "temperature",
        "top_p",
        "user",
        "previous_response_id",
        "store",
        "metadata",
        "parallel_tool_calls",
        "text",
        "truncation",
        "reasoning",
        "service_tier",
        "include",
        "stream_options",
        "prompt_cache_key",
        "safety_identifier",
        "background",
    }
)
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _field(param: str, message: str) -> RequestError:
    return RequestError(message, param=param)


def _parts(content: Any, path: str, role: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _field(path, f"{path} must be a string or an array of content parts, not a JSON {json_type(content)}.")
    out: list[dict[str, Any]] = []
    for j, p in enumerate(content):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind in ("input_text", "output_text", "text"):
            if not isinstance(p.get("text"), str):
                raise _field(f"{path}[{j}].text", f"{path}[{j}].text must be a string.")
            out.append({"type": "text", "text": p["text"]})
        elif kind == "input_image":
            url = p.get("image_url")
            if not isinstance(url, str) or not url:
                raise _field(f"{path}[{j}].image_url", f"{path}[{j}].image_url must be a URL or a data URL.")
            image: dict[str, Any] = {"url": url}
            if isinstance(p.get("detail"), str):
                image["detail"] = p["detail"]
            out.append({"type": "image_url", "image_url": image})
        elif kind == "refusal":
            out.append({"type": "text", "text": str(p.get("refusal", ""))})
        else:
            raise _field(f"{path}[{j}].type", f"{path}[{j}]: content parts of type {kind!r} are not supported."[:200])
    if role == "assistant" or all(p["type"] == "text" for p in out):
        return "".join(p.get("text", "") for p in out)
    return out


def _input(raw: Any) -> list[Message]:
    if isinstance(raw, str):
        if not raw:
            raise _field("input", "'input' must not be empty.")
        return [Message("user", raw)]
    if not isinstance(raw, list) or not raw:
        raise _field("input", "'input' must be a string or a non-empty array of input items.")
    out: list[Message] = []
    for i, item in enumerate(raw):
        path = f"input[{i}]"
        if not isinstance(item, dict):
            raise _field(path, f"{path} must be an object.")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _field(f"{path}.role", f"{path}.role must be user, assistant, system or developer.")
            out.append(Message(role, _parts(item.get("content"), f"{path}.content", role)))
        elif kind == "function_call":
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
                raise _field(path, f"{path}: a function_call item needs a call_id and a name.")
            arguments = item.get("arguments", "{}")
            if not isinstance(arguments, str):
                raise _field(f"{path}.arguments", f"{path}.arguments must be a JSON string.")
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            last = out[-1] if out else None
            if last is not None and last.role == "assistant" and last.extra and last.extra.get("tool_calls"):
                out[-1] = Message("assistant", last.content, {"tool_calls": [*last.extra["tool_calls"], call]})
            else:
                out.append(Message("assistant", None, {"tool_calls": [call]}))
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or not call_id:
                raise _field(f"{path}.call_id", f"{path}.call_id must name the function_call it answers.")
            if not isinstance(output, str):
                raise _field(f"{path}.output", f"{path}.output must be a string.")
            out.append(Message("tool", output, {"tool_call_id": call_id}))
        elif kind == "reasoning":
            continue
        else:
            raise _field(f"{path}.type", f"{path}: input items of type {kind!r} are not supported."[:200])
    return out


def _tools(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise _field("tools", "'tools' must be an array.")
    out = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict) or t.get("type") != "function":
            kind = t.get("type") if isinstance(t, dict) else None
            raise _field(f"tools[{i}].type", f"tools[{i}]: only function tools are supported, not {kind!r}."[:200])
        if not isinstance(t.get("name"), str) or not t["name"]:
            raise _field(f"tools[{i}].name", f"tools[{i}].name is required.")
        function = {k: t[k] for k in ("name", "description", "parameters", "strict") if t.get(k) is not None}
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(raw: Any) -> Any:
    if raw in ("auto", "none", "required"):
        return raw
    if isinstance(raw, dict) and raw.get("type") == "function" and isinstance(raw.get("name"), str):
        return {"type": "function", "function": {"name": raw["name"]}}
    raise _field("tool_choice", "'tool_choice' must be auto, none, required or {'type': 'function', 'name': ...}.")


def parse(data: dict[str, Any], headers: Mapping[bytes, bytes]) -> Turn:
    unknown = sorted(k for k in data if k not in KNOWN)
    if unknown:
        raise _field(unknown[0], f"Unknown parameter: '{unknown[0]}'.")
    messages = _input(data.get("input"))
    lead = 0
    instructions = data.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _field("instructions", "'instructions' must be a string.")
        messages.insert(0, Message("system", instructions))
        lead = 1
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise _field("stream", "'stream' must be a boolean.")
    params: dict[str, Any] = {}
    limit = data.get("max_output_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise _field("max_output_tokens", "'max_output_tokens' must be a positive integer.")
        params["max_tokens"] = limit
    for name in ("temperature", "top_p"):
        value = data.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _field(name, f"'{name}' must be a number.")
            params[name] = value
    if data.get("tools"):
        params["tools"] = _tools(data["tools"])
    if data.get("tool_choice") is not None:
        params["tool_choice"] = _tool_choice(data["tool_choice"])
    if isinstance(data.get("parallel_tool_calls"), bool) and data.get("tools"):
        params["parallel_tool_calls"] = data["parallel_tool_calls"]
    previous = data.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise _field("previous_response_id", "'previous_response_id' must be a response id.")
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise _field("user", "'user' must be a string.")
    store = data.get("store", True)
    if not isinstance(store, bool):
        raise _field("store", "'store' must be a boolean.")
    named = headers.get(b"x-conversation-id")
    keep_as = "resp_" + secrets.token_hex(16)
    extra = {
        "id": keep_as,
        "instructions": instructions,
        "previous": previous,
        "tools": data.get("tools") or [],
        "tool_choice": data.get("tool_choice", "auto"),
        "max_output_tokens": limit,
        "temperature": data.get("temperature"),
        "top_p": data.get("top_p"),
        "metadata": data.get("metadata") or {},
        "store": store,
    }
    return Turn(
        messages,
        params,
        stream,
        named.decode("latin-1") if named else user,
        previous=previous,
        keep_as=keep_as if store else None,
        lead=lead,
        extra=extra,
    )


def response_object(
    extra: dict[str, Any],
    model: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    *,
    status: str = "completed",
    incomplete: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": extra["id"],
        "object": "response",
        "created_at": extra.setdefault("created_at", int(time.time())),
        "status": status,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": extra["instructions"],
        "max_output_tokens": extra["max_output_tokens"],
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": extra["previous"],
        "store": extra["store"],
        "temperature": extra["temperature"],
        "text": {"format": {"type": "text"}},
        "tool_choice": extra["tool_choice"],
        "tools": extra["tools"],
        "top_p": extra["top_p"],
        "truncation": "disabled",
        "usage": usage,
        "metadata": extra["metadata"],
    }


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}]
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _call_item(item_id: str, call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments") or ""
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.get("id") or item_id,
        "name": function.get("name") or "",
        "arguments": arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode(),
        "status": status,
    }


class ResponseEncoder(StreamEncoder):
    """The `response.*` event sequence: one output item for the text, one per function call."""

    def __init__(self, extra: dict[str, Any], model: str, input_tokens: int) -> None:
        self.extra, self.model, self.input_tokens = extra, model, input_tokens
        self.seq = 0
        self.items: list[dict[str, Any]] = []  # finished output items
        self.open: dict[str, Any] | None = None  # the item being streamed
        self.parts: list[str] = []  # the open message's text
        self.calls: dict[int, dict[str, Any]] = {}  # core tool index -> its open function_call item
        self.base = extra["id"][5:21]

    def _event(self, kind: str, **data: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def _item_id(self, kind: str) -> str:
        return f"{kind}_{self.base}{len(self.items)}"

    def start(self) -> bytes:
        shell = response_object(self.extra, self.model, [], None, status="in_progress")
        return self._event("response.created", response=shell) + self._event("response.in_progress", response=shell)

    def _close(self) -> bytes:
        item, self.open = self.open, None
        if item is None:
            return b""
        at = len(self.items)
        out = b""
        if item["type"] == "message":
            text = "".join(self.parts)
            part = {"type": "output_text", "text": text, "annotations": []}
            ids = {"item_id": item["id"], "output_index": at, "content_index": 0}
            out += self._event("response.output_text.done", **ids, text=text)
            out += self._event("response.content_part.done", **ids, part=part)
            done = _message_item(item["id"], text)
        else:
            args = item["arguments"]
            out += self._event(
                "response.function_call_arguments.done", item_id=item["id"], output_index=at, arguments=args
            )
            done = {**item, "status": "completed"}
        self.items.append(done)
        return out + self._event("response.output_item.done", output_index=at, item=done)

    def text(self, text: str) -> bytes:
        out = b""
        if self.open is None or self.open["type"] != "message":
            out += self._close()
            item = self.open = _message_item(self._item_id("msg"), "", "in_progress")
            item["content"] = []
            self.parts = []
            at = len(self.items)
            out += self._event("response.output_item.added", output_index=at, item=item)
            part = {"type": "output_text", "text": "", "annotations": []}
            out += self._event(
                "response.content_part.added", item_id=item["id"], output_index=at, content_index=0, part=part
            )
        self.parts.append(text)
        ids = {"item_id": self.open["id"], "output_index": len(self.items), "content_index": 0}
        return out + self._event("response.output_text.delta", **ids, delta=text)

    def tools(self, calls: list[dict[str, Any]]) -> bytes:
        out = b""
        for n, call in enumerate(calls):
            at_tool = call.get("index", n)
            function = call.get("function") or {}
            item = self.calls.get(at_tool)
            if item is None:
                out += self._close()
                item = self.open = self.calls[at_tool] = _call_item(
                    self._item_id("fc"), {**call, "function": {**function, "arguments": ""}}, "in_progress"
                )
                out += self._event("response.output_item.added", output_index=len(self.items), item=item)
            elif item is not self.open:
                continue
            args = function.get("arguments")
            if isinstance(args, dict):
                args = orjson.dumps(args).decode()
            if args:
                item["arguments"] += args
                out += self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=len(self.items),
                    delta=args,
                )
        return out

    def end(self, finish: str, seen: Seen) -> bytes:
        out = self._close()
        u = seen.usage
        usage = (
            _usage(u.prompt_tokens, u.completion_tokens)
            if u
            else _usage(self.input_tokens, estimate("".join(seen.text)))
        )
        reason = INCOMPLETE.get(finish)
        final = response_object(
            self.extra, self.model, self.items, usage, status="incomplete" if reason else "completed", incomplete=reason
        )
        return out + self._event("response.incomplete" if reason else "response.completed", response=final)

    def cut_off(self, message: str) -> bytes:
        out = self._close()
        error = {"code": "server_error", "message": message}
        final = response_object(self.extra, self.model, self.items, None, status="failed", error=error)
        return out + self._event("response.failed", response=final)


class ResponsesDoor(ChatDoor):
    """The ASGI app of `POST /v1/responses`."""

    door = "responses"
    id_prefix = "resp_"

    def turn(self, data: dict[str, Any], headers: Mapping[bytes, bytes]) -> Turn:
        return parse(data, headers)

    def error_body(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> bytes:
        return error_body(message, error_type(status), param=param, code=code)

    def completion_body(self, model: str, c: Completion, tokens: tuple[int, int, bool], turn: Turn) -> bytes:
        extra = turn.extra
        base = extra["id"][5:21]
        output: list[dict[str, Any]] = []
        if c.text or not c.tool_calls:
            output.append(_message_item(f"msg_{base}0", c.text))
        for call in c.tool_calls or ():
            output.append(_call_item(f"fc_{base}{len(output)}", call))
        reason = INCOMPLETE.get(c.finish_reason)
        body = response_object(
            extra,
            model,
            output,
            _usage(tokens[0], tokens[1]),
            status="incomplete" if reason else "completed",
            incomplete=reason,
        )
        return orjson.dumps(body)

    def encoder(self, model: str, turn: Turn, req: ChatRequest) -> StreamEncoder:
        return ResponseEncoder(turn.extra, model, estimate_prompt(req.messages))

    # -- previous_response_id -----------------------------------------------------------------

    def _key(self, response_id: str) -> str:
        return f"responses:{response_id}"

    async def earlier(self, previous: str, turn: Turn) -> list[Message]:
        raw = await self.engine.store.get(self._key(previous))
        stored = orjson.loads(raw) if raw else None
        if not isinstance(stored, dict) or stored.get("owner") != turn.owner:  # another key's is not found either
            raise RequestError(
                f"Previous response with id '{previous}' not found.",
                status=404,
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return [Message(m["role"], m.get("content"), m.get("extra")) for m in stored["messages"]]

    async def keep(self, turn: Turn, text: str, calls: list[dict[str, Any]] | None) -> None:
        # what led here (stored earlier) and this request's input, without this request's instructions
        given = turn.messages[1:] if turn.extra["instructions"] is not None else turn.messages
        kept = [*given, Message("assistant", text or None, {"tool_calls": calls} if calls else None)]
        record = {
            "owner": turn.owner,
            "messages": [{"role": m.role, "content": m.content, "extra": m.extra} for m in kept],
        }
        assert turn.keep_as is not None
        await self.engine.store.put(self._key(turn.keep_as), orjson.dumps(record).decode(), RETENTION)
