"""A fake Dify service API on loopback: /chat-messages, /completion-messages, /workflows/run and
their stop endpoints.

Streams SSE the way Dify does (`data: {json}` + blank line; `event: ping` with no data line before
the first and second chunks), keeps conversations per (user, id) so tests can assert memory,
answers 404 "Conversation Not Exists." for unknown ids, and takes queued faults (one per request):

    fake.fail(500)             # the next request answers with that status and a Dify error body
    fake.html(502)             # the next request gets an HTML page from "the CDN"
    fake.hang(5)               # the next request waits 5 s before answering
    fake.error_event()         # an `error` event inside the 200 stream, after the first chunk
    fake.replace("[removed]")  # a message_replace event after the first chunk
    fake.image("https://...")  # a message_file (image) event before message_end
    fake.workflow_fails()      # the next workflow run ends with workflow_finished status=failed
    fake.agent = True          # stream agent_message events, then a full-answer `message`
    fake.workflow_chunks = False  # workflow answers only in outputs, no text_chunk events
    fake.node_output_bytes = 2**20  # workflows also send a 1 MB node_finished event

Chat answers are "dify#<turn>: <query>", completion "completed: <inputs.query>", workflow
"flow: <inputs.query>" in `outputs["result"]`. `fake.stops` records stop calls (path, user).

`GET /info` (name, `fake.mode`) and `GET /parameters` answer 401 "Access token is invalid" unless
the key is `fake.api_key` (when set); `fake.info = False` makes /info a 404 (an older Dify).
`fake.probes` records them (path, Authorization).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from typing import Any

import orjson
from aiohttp import web

from tests.servers import serve_aiohttp


class FakeDify:
    def __init__(
        self,
        agent: bool = False,
        workflow_chunks: bool = True,
        node_output_bytes: int = 0,
        api_key: str | None = None,
        mode: str = "chat",
    ) -> None:
        self.agent = agent
        self.api_key = api_key
        self.mode = mode
        self.info = True
        self.probes: list[tuple[str, str | None]] = []  # (path, Authorization) of /info, /parameters
        self.workflow_chunks = workflow_chunks
        #: > 0: workflows also send a `node_finished` event whose outputs are this large
        self.node_output_bytes = node_output_bytes
        self.requests: list[dict[str, Any]] = []
        self.stops: list[tuple[str, str | None]] = []
        self.conversations: dict[tuple[str, str], list[str]] = {}  # (user, id) -> queries
        self.faults: deque[tuple[str, Any]] = deque()
        self.base_url = ""
        self._cm: Any = None

    def fail(self, status: int, code: str = "internal_server_error", message: str = "fake failure") -> None:
        self.faults.append(("status", (status, {"code": code, "message": message, "status": status})))

    def html(self, status: int = 502) -> None:
        self.faults.append(("html", status))

    def hang(self, seconds: float) -> None:
        self.faults.append(("hang", seconds))

    def error_event(self, code: str = "completion_request_error", status: int = 400) -> None:
        self.faults.append(("error_event", (code, status)))

    def replace(self, text: str) -> None:
        self.faults.append(("replace", text))

    def image(self, url: str) -> None:
        self.faults.append(("image", url))

    def workflow_fails(self) -> None:
        self.faults.append(("workflow_failed", None))

    def forget_all(self) -> None:
        self.conversations.clear()

    async def __aenter__(self) -> FakeDify:
        app = web.Application()
        app.router.add_post("/v1/chat-messages", self._chat)
        app.router.add_post("/v1/completion-messages", self._completion)
        app.router.add_post("/v1/workflows/run", self._workflow)
        app.router.add_post("/v1/chat-messages/{task}/stop", self._stop)
        app.router.add_post("/v1/completion-messages/{task}/stop", self._stop)
        app.router.add_post("/v1/workflows/tasks/{task}/stop", self._stop)
        app.router.add_get("/v1/info", self._info)
        app.router.add_get("/v1/parameters", self._parameters)
        self._cm = serve_aiohttp(app)
        self.base_url = (await self._cm.__aenter__()) + "/v1"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)

    async def _start(self, request: web.Request) -> tuple[dict[str, Any], Any, web.StreamResponse]:
        body = await request.json()
        self.requests.append(
            {
                "path": request.path,
                "json": body,
                "auth": request.headers.get("Authorization"),
                "headers": request.headers,
            }
        )
        fault = self.faults.popleft() if self.faults else None
        if fault and fault[0] == "status":
            raise _Early(web.json_response(fault[1][1], status=fault[1][0]))
        if fault and fault[0] == "html":
            raise _Early(
                web.Response(text="<html><h1>Bad Gateway</h1></html>", status=fault[1], content_type="text/html")
            )
        if fault and fault[0] == "hang":
            await asyncio.sleep(fault[1])
        cid = body.get("conversation_id")
        if cid and (body.get("user", ""), cid) not in self.conversations:
            raise _Early(
                web.json_response(
                    {"code": "not_found", "message": "Conversation Not Exists.", "status": 404}, status=404
                )
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"event: ping\n\n")
        return body, fault, resp

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body, fault, resp = await self._start(request)
        except _Early as e:
            return e.response
        return await self._answer(resp, body, fault, body.get("user", ""), body.get("conversation_id") or "")

    async def _answer(
        self, resp: web.StreamResponse, body: dict[str, Any], fault: Any, user: str, cid: str
    ) -> web.StreamResponse:
        if not cid:
            cid = str(uuid.uuid4())
            self.conversations[(user, cid)] = []
        history = self.conversations[(user, cid)]
        history.append(body["query"])
        answer = f"dify#{len(history)}: {body['query']}"
        common = {"conversation_id": cid, "message_id": "m-" + cid[:8], "task_id": "task-" + cid[:8], "created_at": 0}
        kind = fault[0] if fault else None
        event = "agent_message" if self.agent else "message"
        words = answer.split(" ")
        for i, word in enumerate(words):
            if kind == "error_event" and i == 1:
                code, status = fault[1]
                error = {"event": "error", "status": status, "code": code, "message": "model failed"}
                await _send(resp, {**error, "conversation_id": cid, "message_id": common["message_id"]})
                return resp
            await _send(resp, {"event": event, "answer": word if i == 0 else " " + word, **common})
            if i == 0:
                await resp.write(b"event: ping\n\n")
            if kind == "replace" and i == 0:
                await _send(resp, {"event": "message_replace", "answer": fault[1], **common})
                break
        if kind == "image":
            await _send(
                resp,
                {
                    "event": "message_file",
                    "id": "f1",
                    "type": "image",
                    "belongs_to": "assistant",
                    "url": fault[1],
                    **common,
                },
            )
        if self.agent:  # New Agent style: the whole answer again at the end
            await _send(resp, {"event": "message", "answer": answer, **common})
        usage = {
            "prompt_tokens": 3,
            "completion_tokens": len(words),
            "total_tokens": 3 + len(words),
            "total_price": "0.001",
        }
        await _send(resp, {"event": "message_end", "id": common["message_id"], "metadata": {"usage": usage}, **common})
        return resp

    async def _completion(self, request: web.Request) -> web.StreamResponse:
        try:
            body, _, resp = await self._start(request)
        except _Early as e:
            return e.response
        text = f"completed: {body['inputs'].get('query', '')}"
        await _send(resp, {"event": "message", "answer": text, "task_id": "t-c", "message_id": "m"})
        await _send(resp, {"event": "message_end", "metadata": {}, "task_id": "t-c", "message_id": "m"})
        return resp

    async def _workflow(self, request: web.Request) -> web.StreamResponse:
        try:
            body, fault, resp = await self._start(request)
        except _Early as e:
            return e.response
        run = {"task_id": "t-w", "workflow_run_id": "w"}
        await _send(resp, {"event": "workflow_started", **run, "data": {"id": "w"}})
        text = f"flow: {body['inputs'].get('query', '')}"
        if self.node_output_bytes:
            node = {"node_id": "llm", "status": "succeeded", "outputs": {"text": "x" * self.node_output_bytes}}
            await _send(resp, {"event": "node_finished", **run, "data": node})
        if fault and fault[0] == "workflow_failed":
            failed = {"status": "failed", "outputs": None, "error": "node LLM failed"}
            await _send(resp, {"event": "workflow_finished", **run, "data": failed})
            return resp
        if self.workflow_chunks:
            for piece in (text[:6], text[6:]):
                await _send(resp, {"event": "text_chunk", **run, "data": {"text": piece}})
        data = {"status": "succeeded", "outputs": {"result": text}, "total_tokens": 7}
        await _send(resp, {"event": "workflow_finished", **run, "data": data})
        return resp

    async def _stop(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.stops.append((request.path, body.get("user")))
        return web.json_response({"result": "success"})

    def _auth(self, request: web.Request) -> web.StreamResponse | None:
        self.probes.append((request.path, request.headers.get("Authorization")))
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            body = {"code": "unauthorized", "message": "Access token is invalid", "status": 401}
            return web.json_response(body, status=401, headers={"WWW-Authenticate": 'Bearer realm="api"'})
        return None

    async def _info(self, request: web.Request) -> web.StreamResponse:
        if not self.info:
            raise web.HTTPNotFound()
        denied = self._auth(request)
        if denied is not None:
            return denied
        info = {"name": "Fake KB", "description": "", "tags": [], "mode": self.mode, "author_name": "t"}
        return web.json_response(info)

    async def _parameters(self, request: web.Request) -> web.StreamResponse:
        denied = self._auth(request)
        if denied is not None:
            return denied
        return web.json_response({"opening_statement": "", "user_input_form": [], "system_parameters": {}})


class _Early(Exception):
    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response


async def _send(resp: web.StreamResponse, obj: Any) -> None:
    await resp.write(b"data: " + orjson.dumps(obj) + b"\n\n")
