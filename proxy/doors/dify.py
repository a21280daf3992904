"""The Dify Service API door, under `/dify/v1`: for bots written for a Dify app (dify-on-wechat,
the `dify-client` library ...). Their base URL becomes `http://host:8080/dify/v1` and their API key
a Switchboard key.

Which channel answers: the key's `dify_channel`, else the key's only channel (a Dify "app key" is
a `keys` entry of its own, e.g. `{key: "${SUPPORT_APP_KEY}", channels: [support], dify_channel:
support}`). The channel's providers answer, whatever API they speak.

- `POST /chat-messages` (`query`, `inputs`, `user`, `conversation_id`, `files` with remote image
  URLs, `response_mode` blocking or streaming): Switchboard keeps the conversation (its
  transcript in the store, per key and user) and returns its `conversation_id`, `message_id` and
  `task_id`; streams carry `message` events, then `message_end` with the usage (or `error`).
  `POST /chat-messages/{task_id}/stop` ends a streaming answer early.
- Conversations: `GET /conversations`, `POST /conversations/{id}/name`, `DELETE
  /conversations/{id}`, `GET /messages?conversation_id=`; another user's (or key's) conversation
  is a 404 "Conversation Not Exists.", as in Dify.
- `POST /completion-messages` (the query in `inputs.query` or `query`) and `POST /workflows/run`
  (the query is `inputs.query`, else the first text input; the answer is the workflow's `text`
  output; streams `workflow_started`, `text_chunk`, `workflow_finished`).
- `GET /parameters`, `GET /meta`, `GET /info` answer so that clients probing them start.
- Errors: Dify's `{"code", "message", "status"}` with the same statuses as the other doors.
"""

from __future__ import annotations

import time
import uuid
import weakref
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.config import Channel, KeyConfig
from proxy.doors.chat import API_DOOR, ChatDoor, DoorView, Seen, StreamEncoder, Turn
from proxy.errors import RequestError
from proxy.routing import conversation as conversation_of
from proxy.types import ChatRequest, Completion, Message
from proxy.usage import estimate_prompt

CODES = {
    400: "invalid_param",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    408: "request_timeout",
    413: "request_entity_too_large",
    429: "too_many_requests",
    502: "completion_request_error",
    503: "provider_not_initialize",
}
JSON = "application/json"


def error_body(status: int, message: str) -> bytes:
    code = CODES.get(status, "internal_server_error" if status >= 500 else "invalid_param")
    return orjson.dumps({"code": code, "message": message, "status": status})


def _error(status: int, message: str) -> Response:
    return Response(error_body(status, message), status, media_type=JSON)


def _user(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise RequestError("user is required: the end user's id, as in Dify.", param="user")
    return value


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _index_key(owner: str, user: str) -> str:
    return f"dify:conversations:{owner}:{user}"


def conversation_key(channel: str, owner: str, user: str, conversation_id: str) -> str:
    """Where the transcript lives: the API's conversations, under this session name."""
    return conversation_of(channel, API_DOOR, owner, f"dify|{user}|{conversation_id}")


class DifyEncoder(StreamEncoder):
    """Dify's SSE events: `message` per piece (`text_chunk` for workflows), then `message_end`
    (`workflow_finished`) or `error`."""

    def __init__(self, extra: dict[str, Any], input_tokens: int) -> None:
        self.extra, self.input_tokens = extra, input_tokens
        self.ids = {"task_id": extra["task_id"], "id": extra["message_id"], "message_id": extra["message_id"]}
        if extra["mode"] == "chat":
            self.ids["conversation_id"] = extra["conversation_id"]

    @staticmethod
    def _event(data: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(data) + b"\n\n"

    def start(self) -> bytes:
        if self.extra["mode"] != "workflow":
            return b""
        run = {
            "id": self.extra["message_id"],
            "workflow_id": self.extra["channel"],
            "created_at": self.extra["created_at"],
        }
        return self._event(
            {"event": "workflow_started", "task_id": self.extra["task_id"], "workflow_run_id": run["id"], "data": run}
        )

    def text(self, text: str) -> bytes:
        if self.extra["mode"] == "workflow":
            return self._event({"event": "text_chunk", "task_id": self.extra["task_id"], "data": {"text": text}})
        return self._event({"event": "message", **self.ids, "answer": text, "created_at": self.extra["created_at"]})

    def tools(self, calls: list[dict[str, Any]]) -> bytes:
        return b""  # Dify's chat API has no tool calls to show

    def end(self, finish: str, seen: Seen) -> bytes:
        u = seen.usage
        usage = _usage(u.prompt_tokens, u.completion_tokens) if u else _usage(self.input_tokens, 0)
        if self.extra["mode"] == "workflow":
            data = _workflow_run(self.extra, "".join(seen.text), usage["total_tokens"])
            return self._event(
                {
                    "event": "workflow_finished",
                    "task_id": self.extra["task_id"],
                    "workflow_run_id": data["id"],
                    "data": data,
                }
            )
        return self._event({"event": "message_end", **self.ids, "metadata": {"usage": usage}})

    def cut_off(self, message: str) -> bytes:
        err = {"event": "error", **self.ids, "status": 502, "code": "completion_request_error", "message": message}
        return self._event(err)


def _workflow_run(extra: dict[str, Any], text: str, tokens: int) -> dict[str, Any]:
    now = int(time.time())
    return {
        "id": extra["message_id"],
        "workflow_id": extra["channel"],
        "status": "succeeded",
        "outputs": {"text": text},
        "error": None,
        "elapsed_time": round(time.time() - extra["started"], 3),
        "total_tokens": tokens,
        "total_steps": 1,
        "created_at": extra["created_at"],
        "finished_at": now,
    }


class DifyDoor(ChatDoor):
    """One Dify endpoint that answers (`mode`: chat, completion or workflow); the instance is
    its ASGI app. `running` maps the task ids of streams in progress to their encoders, for
    `stop`."""

    door = "dify"
    running: ClassVar[weakref.WeakValueDictionary[str, DifyEncoder]] = weakref.WeakValueDictionary()

    def __init__(self, *args: Any, mode: str = "chat", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mode = mode

    def _channel(self, key: KeyConfig, name: Any, view: DoorView) -> Channel:
        return dify_channel(key, view)

    def turn(self, data: dict[str, Any], headers: Mapping[bytes, bytes]) -> Turn:
        user = _user(data.get("user"))
        inputs = data.get("inputs", {})
        if not isinstance(inputs, dict):
            raise RequestError("inputs must be an object.", param="inputs")
        mode = data.get("response_mode", "blocking")
        if mode not in ("blocking", "streaming"):
            raise RequestError("response_mode must be blocking or streaming.", param="response_mode")
        query = data.get("query")
        if self.mode == "completion":
            query = inputs.get("query") if isinstance(inputs.get("query"), str) else query
        elif self.mode == "workflow":
            texts = [v for v in inputs.values() if isinstance(v, str) and v]
            query = inputs.get("query") if isinstance(inputs.get("query"), str) else (texts[0] if texts else None)
        if not isinstance(query, str) or not query.strip():
            where = "inputs (a text input)" if self.mode == "workflow" else "query"
            raise RequestError(
                f"{where} is required: the user's message.", param="inputs" if self.mode == "workflow" else "query"
            )
        content: str | list[dict[str, Any]] = query
        files = data.get("files") or []
        if files:
            content = [{"type": "text", "text": query}, *_images(files)]
        now = int(time.time())
        extra: dict[str, Any] = {
            "mode": self.mode,
            "user": user,
            "query": query,
            "inputs": inputs,
            "task_id": str(uuid.uuid4()),
            "message_id": str(uuid.uuid4()),
            "created_at": now,
            "started": time.time(),
            "channel": "",
        }
        turn = Turn([Message("user", content)], {}, mode == "streaming", extra=extra)
        if self.mode == "chat":
            given = data.get("conversation_id") or ""
            if not isinstance(given, str):
                raise RequestError("conversation_id must be a string.", param="conversation_id")
            extra["conversation_id"] = conversation_id = given or str(uuid.uuid4())
            extra["new"] = not given
            turn.session = f"dify|{user}|{conversation_id}"
            turn.previous = given or None
            turn.keep_as = conversation_id
        return turn

    async def earlier(self, previous: str, turn: Turn) -> list[Message]:
        """A conversation_id must be one of this user's (the transcript itself comes from the
        session's stored history)."""
        index = await _index(self.engine.store, turn.owner, turn.extra["user"])
        if not any(c["id"] == previous for c in index):
            raise RequestError("Conversation Not Exists.", status=404, param="conversation_id")
        return []

    async def keep(self, turn: Turn, text: str, calls: list[dict[str, Any]] | None) -> None:
        extra = turn.extra
        index = await _index(self.engine.store, turn.owner, extra["user"])
        now = int(time.time())
        for c in index:
            if c["id"] == extra["conversation_id"]:
                c["updated_at"] = now
                break
        else:
            name = extra["query"].strip().splitlines()[0][:40] if extra["query"].strip() else "New conversation"
            index.append(
                {
                    "id": extra["conversation_id"],
                    "name": name,
                    "created_at": now,
                    "updated_at": now,
                    "inputs": extra["inputs"],
                }
            )
        await _save_index(self.engine.store, turn.owner, extra["user"], index)

    def completion_body(self, model: str, c: Completion, tokens: tuple[int, int, bool], turn: Turn) -> bytes:
        extra = turn.extra
        extra["channel"] = model
        usage = _usage(tokens[0], tokens[1])
        if self.mode == "workflow":
            run = _workflow_run(extra, c.text, usage["total_tokens"])
            return orjson.dumps({"workflow_run_id": run["id"], "task_id": extra["task_id"], "data": run})
        body: dict[str, Any] = {
            "event": "message",
            "task_id": extra["task_id"],
            "id": extra["message_id"],
            "message_id": extra["message_id"],
            "mode": "chat" if self.mode == "chat" else "completion",
            "answer": c.text,
            "metadata": {"usage": usage, "retriever_resources": []},
            "created_at": extra["created_at"],
        }
        if self.mode == "chat":
            body["conversation_id"] = extra["conversation_id"]
        return orjson.dumps(body)

    def encoder(self, model: str, turn: Turn, req: ChatRequest) -> StreamEncoder:
        turn.extra["channel"] = model
        encoder = DifyEncoder(turn.extra, estimate_prompt(req.messages))
        self.running[turn.extra["task_id"]] = encoder
        return encoder

    def error_body(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> bytes:
        return error_body(status, message)


def dify_channel(key: KeyConfig, view: DoorView) -> Channel:
    name = key.dify_channel
    if name is None:
        named = [c for c in key.channels if c != "*"]
        if len(named) != 1 or "*" in key.channels:
            raise RequestError(
                "This key reaches several channels: set its dify_channel in the config (or use a Dify app key entry).",
                status=400,
            )
        name = named[0]
    channel = view.settings.by_name.get(name)
    if channel is None:
        raise RequestError(f"The key's channel '{name}' does not exist.", status=404)
    return channel


def _images(files: Any) -> list[dict[str, Any]]:
    if not isinstance(files, list):
        raise RequestError("files must be an array.", param="files")
    out = []
    for i, f in enumerate(files):
        if not isinstance(f, dict) or f.get("type") != "image":
            raise RequestError(f"files[{i}]: only image files are supported.", param=f"files[{i}]")
        if f.get("transfer_method") != "remote_url" or not isinstance(f.get("url"), str):
            raise RequestError(
                f"files[{i}]: only remote_url images are supported (no file uploads).", param=f"files[{i}]"
            )
        out.append({"type": "image_url", "image_url": {"url": f["url"]}})
    return out


async def _index(store: Any, owner: str, user: str) -> list[dict[str, Any]]:
    raw = await store.get(_index_key(owner, user))
    data = orjson.loads(raw) if raw else []
    return data if isinstance(data, list) else []


async def _save_index(store: Any, owner: str, user: str, index: list[dict[str, Any]]) -> None:
    await store.put(_index_key(owner, user), orjson.dumps(index).decode())


class DifyAPI:
    """The Dify endpoints that do not answer: conversations, messages, stop, app info."""

    def __init__(self, door: DifyDoor) -> None:
        self.door = door

    def _who(self, request: Request) -> tuple[str, Channel]:
        door = self.door
        headers = {k.encode("latin-1"): v.encode("latin-1") for k, v in request.headers.items()}
        name, key = door._auth(door.api_key(headers), door.view)
        return name, dify_channel(key, door.view)

    async def _body(self, request: Request) -> dict[str, Any]:
        try:
            data = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            raise RequestError("The request body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise RequestError("The request body must be a JSON object.")
        return data

    async def _run(self, request: Request, handler: Any) -> Response:
        try:
            return await handler(request)
        except RequestError as e:
            self.door.refused(e.status, e.code, e.param)
            return _error(e.status, e.message)

    async def conversations(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            owner, _ = self._who(request)
            user = _user(request.query_params.get("user"))
            limit = _limit(request.query_params.get("limit"))
            index = sorted(await _index(self.door.engine.store, owner, user), key=lambda c: -c["updated_at"])
            last = request.query_params.get("last_id")
            if last:
                at = next((i for i, c in enumerate(index) if c["id"] == last), None)
                if at is None:
                    raise RequestError("Last Conversation Not Exists.", status=404)
                index = index[at + 1 :]
            page = [_conversation(c) for c in index[:limit]]
            return _json({"limit": limit, "has_more": len(index) > limit, "data": page})

        return await self._run(request, handle)

    async def rename(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            owner, _ = self._who(request)
            data = await self._body(request)
            user = _user(data.get("user"))
            store = self.door.engine.store
            index = await _index(store, owner, user)
            found = _find(index, request.path_params["conversation_id"])
            name = data.get("name")
            if data.get("auto_generate"):
                name = found["name"]
            if not isinstance(name, str) or not name.strip():
                raise RequestError("name is required (or auto_generate: true).", param="name")
            found["name"] = name.strip()[:100]
            found["updated_at"] = int(time.time())
            await _save_index(store, owner, user, index)
            return _json(_conversation(found))

        return await self._run(request, handle)

    async def delete(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            owner, channel = self._who(request)
            data = await self._body(request)
            user = _user(data.get("user") or request.query_params.get("user"))
            store = self.door.engine.store
            index = await _index(store, owner, user)
            found = _find(index, request.path_params["conversation_id"])
            index.remove(found)
            await store.clear(conversation_key(channel.name, owner, user, found["id"]))
            await _save_index(store, owner, user, index)
            return _json({"result": "success"})

        return await self._run(request, handle)

    async def messages(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            owner, channel = self._who(request)
            q = request.query_params
            user = _user(q.get("user"))
            conversation = q.get("conversation_id") or ""
            store = self.door.engine.store
            found = _find(await _index(store, owner, user), conversation)
            limit = _limit(q.get("limit"))
            history = await store.history(conversation_key(channel.name, owner, user, found["id"]), 10_000)
            pairs = _pairs(found["id"], history, found["inputs"] if "inputs" in found else {})
            first = q.get("first_id")
            if first:
                at = next((i for i, m in enumerate(pairs) if m["id"] == first), None)
                if at is None:
                    raise RequestError("First Message Not Exists.", status=404)
                pairs = pairs[:at]
            page = pairs[-limit:]
            return _json({"limit": limit, "has_more": len(pairs) > limit, "data": page})

        return await self._run(request, handle)

    async def stop(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            self._who(request)
            data = await self._body(request)
            user = _user(data.get("user"))
            encoder = DifyDoor.running.get(request.path_params["task_id"])
            if encoder is not None and encoder.extra["user"] == user:
                encoder.stopped = True
            return _json({"result": "success"})

        return await self._run(request, handle)

    async def parameters(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            _, channel = self._who(request)
            return _json(
                {
                    "opening_statement": channel.config.description or "",
                    "suggested_questions": [],
                    "suggested_questions_after_answer": {"enabled": False},
                    "speech_to_text": {"enabled": False},
                    "text_to_speech": {"enabled": False},
                    "retriever_resource": {"enabled": False},
                    "annotation_reply": {"enabled": False},
                    "more_like_this": {"enabled": False},
                    "user_input_form": [],
                    "sensitive_word_avoidance": {"enabled": False},
                    "file_upload": {"image": {"enabled": True, "number_limits": 3, "transfer_methods": ["remote_url"]}},
                    "system_parameters": {"image_file_size_limit": 10, "file_size_limit": 15},
                }
            )

        return await self._run(request, handle)

    async def meta(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            self._who(request)
            return _json({"tool_icons": {}})

        return await self._run(request, handle)

    async def info(self, request: Request) -> Response:
        async def handle(request: Request) -> Response:
            _, channel = self._who(request)
            return _json(
                {"name": channel.name, "description": channel.config.description or "", "tags": [], "mode": "chat"}
            )

        return await self._run(request, handle)


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type=JSON)


def _limit(raw: str | None) -> int:
    if raw is None:
        return 20
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise RequestError("limit must be a number from 1 to 100.", param="limit")
    return int(raw)


def _find(index: list[dict[str, Any]], conversation_id: str) -> dict[str, Any]:
    found = next((c for c in index if c["id"] == conversation_id), None)
    if found is None:
        raise RequestError("Conversation Not Exists.", status=404, param="conversation_id")
    return found


def _conversation(c: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": c["id"],
        "name": c["name"],
        "inputs": c.get("inputs") or {},
        "status": "normal",
        "introduction": "",
        "created_at": c["created_at"],
        "updated_at": c["updated_at"],
    }


def _pairs(conversation_id: str, history: list[Message], inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """Stored user/assistant turns as Dify messages (a query and its answer each)."""
    out: list[dict[str, Any]] = []
    query: str | None = None
    for m in history:
        if m.role == "user":
            query = m.text()
        elif m.role == "assistant" and query is not None:
            n = len(out)
            out.append(
                {
                    "id": f"{conversation_id}-{n}",
                    "conversation_id": conversation_id,
                    "inputs": inputs,
                    "query": query,
                    "answer": m.text(),
                    "message_files": [],
                    "feedback": None,
                    "retriever_resources": [],
                    "created_at": 0,
                }
            )
            query = None
    return out
