"""A fake Dify service API on loopback: /chat-messages, /completion-messages, /workflows/run.

Streams SSE the way Dify does (`data: {json}` + blank line; `event: ping` with no data line), keeps
conversations per (user, id) so tests can assert memory, answers 404 "Conversation Not Exists." for
unknown ids, and takes queued faults:

    fake.fail(500)            # the next request answers with that status and a Dify error body
    fake.error_event()        # an `error` event inside the 200 stream
    fake.replace("[removed]") # a message_replace event after the first chunk
    fake.agent = True         # stream agent_message events instead of message
"""

from __future__ import annotations

import uuid
from collections import deque
from typing import Any

import orjson
from aiohttp import web

from tests.servers import serve_aiohttp


class FakeDify:
    def __init__(self, agent: bool = False) -> None:
        self.agent = agent
        self.requests: list[dict[str, Any]] = []
        self.conversations: dict[tuple[str, str], list[str]] = {}  # (user, id) -> queries
        self.faults: deque[tuple[str, Any]] = deque()
        self.base_url = ""
        self._cm: Any = None

    def fail(self, status: int, code: str = "internal_server_error", message: str = "fake failure") -> None:
        self.faults.append(("status", (status, {"code": code, "message": message, "status": status})))

    def error_event(self, code: str = "completion_request_error") -> None:
        self.faults.append(("error_event", code))

    def replace(self, text: str) -> None:
        self.faults.append(("replace", text))

    def forget_all(self) -> None:
        self.conversations.clear()

    async def __aenter__(self) -> FakeDify:
        app = web.Application()
        app.router.add_post("/v1/chat-messages", self._chat)
        app.router.add_post("/v1/completion-messages", self._completion)
        app.router.add_post("/v1/workflows/run", self._workflow)
        self._cm = serve_aiohttp(app)
        self.base_url = (await self._cm.__aenter__()) + "/v1"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)

    async def _start(self, request: web.Request) -> tuple[dict[str, Any], Any, web.StreamResponse]:
        body = await request.json()
        self.requests.append({"path": request.path, "json": body, "auth": request.headers.get("Authorization")})
        fault = self.faults.popleft() if self.faults else None
        if fault and fault[0] == "status":
            raise _Early(*fault[1])
        cid = body.get("conversation_id")
        if cid and (body.get("user", ""), cid) not in self.conversations:
            raise _Early(404, {"code": "not_found", "message": "Conversation Not Exists.", "status": 404})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"event: ping\n\n")
        return body, fault, resp

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body, fault, resp = await self._start(request)
        except _Early as e:
            return web.json_response(e.body, status=e.status)
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
        common = {"conversation_id": cid, "message_id": "m-" + cid[:8], "task_id": "t-1", "created_at": 0}
        event = "agent_message" if self.agent else "message"
        words = answer.split(" ")
        for i, word in enumerate(words):
            if fault and fault[0] == "error_event" and i == 1:
                await _send(
                    resp, {"event": "error", "status": 400, "code": fault[1], "message": "model failed", **common}
                )
                return resp
            await _send(resp, {"event": event, "answer": word if i == 0 else " " + word, **common})
            if fault and fault[0] == "replace" and i == 0:
                await _send(resp, {"event": "message_replace", "answer": fault[1], **common})
                break
        if self.agent:  # New Agent style: the whole answer again at the end
            await _send(resp, {"event": "message", "answer": answer, **common})
        await _send(
            resp,
            {
                "event": "message_end",
                "metadata": {
                    "usage": {"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)}
                },
                **common,
            },
        )
        return resp

    async def _completion(self, request: web.Request) -> web.StreamResponse:
        try:
            body, _, resp = await self._start(request)
        except _Early as e:
            return web.json_response(e.body, status=e.status)
        text = f"completed: {body['inputs'].get('query', '')}"
        await _send(resp, {"event": "message", "answer": text, "task_id": "t", "message_id": "m"})
        await _send(resp, {"event": "message_end", "metadata": {}, "task_id": "t", "message_id": "m"})
        return resp

    async def _workflow(self, request: web.Request) -> web.StreamResponse:
        try:
            body, _, resp = await self._start(request)
        except _Early as e:
            return web.json_response(e.body, status=e.status)
        await _send(resp, {"event": "workflow_started", "workflow_run_id": "w", "data": {"id": "w"}})
        await _send(
            resp,
            {
                "event": "workflow_finished",
                "workflow_run_id": "w",
                "data": {"status": "succeeded", "outputs": {"result": f"flow: {body['inputs'].get('query', '')}"}},
            },
        )
        return resp


class _Early(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status, self.body = status, body


async def _send(resp: web.StreamResponse, obj: Any) -> None:
    await resp.write(b"data: " + orjson.dumps(obj) + b"\n\n")
