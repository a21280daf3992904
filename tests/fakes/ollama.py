"""A fake Ollama server on loopback: /api/chat (NDJSON stream or one object), /api/show, /api/tags.

Every streamed line, the final `done: true` one included, carries `message` and `model` — the
minimum LiteLLM's parser needs (backends.md §4.6). The answer is "local: <last user text>",
streamed word by word. Faults, one per request:

    fake.fail_next(404, 'model "x" not found, try pulling it first')   # JSON {"error": ...}
    fake.error_midway("out of memory")   # an {"error": ...} line after the first chunk
    fake.hang(5)                         # wait 5 s before answering

`GET /api/tags` lists `fake.pulled` (default `qwen2.5:latest`).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from tests.servers import serve_aiohttp


class FakeOllama:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.faults: list[tuple[str, Any]] = []
        self.pulled: list[str] = ["qwen2.5:latest"]
        self.base_url = ""
        self._cm: Any = None

    def fail_next(self, status: int, text: str) -> None:
        self.faults.append(("status", (status, text)))

    def error_midway(self, text: str) -> None:
        self.faults.append(("midway", text))

    def hang(self, seconds: float) -> None:
        self.faults.append(("hang", seconds))

    async def __aenter__(self) -> FakeOllama:
        app = web.Application()
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/show", self._show)
        app.router.add_get("/api/tags", self._tags)
        self._cm = serve_aiohttp(app)
        self.base_url = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        fault: tuple[str, Any] = self.faults.pop(0) if self.faults else ("", None)
        kind, arg = fault
        if kind == "status":
            return web.json_response({"error": arg[1]}, status=arg[0])
        if kind == "hang":
            await asyncio.sleep(arg)
        user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        words = f"local: {user}".split(" ")
        now = datetime.now(UTC).isoformat()
        final = {
            "model": body["model"],
            "created_at": now,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 4,
            "eval_count": len(words),
        }
        if not body.get("stream", True):
            return web.json_response({**final, "message": {"role": "assistant", "content": " ".join(words)}})
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for i, w in enumerate(words):
            if kind == "midway" and i == 1:
                await resp.write(orjson.dumps({"error": arg}) + b"\n")
                return resp
            line = {
                "model": body["model"],
                "created_at": now,
                "message": {"role": "assistant", "content": w if i == 0 else " " + w},
                "done": False,
            }
            await resp.write(orjson.dumps(line) + b"\n")
        await resp.write(orjson.dumps(final) + b"\n")
        return resp

    async def _show(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"modelfile": "", "parameters": "", "template": "{{ .Prompt }}", "details": {}, "model_info": {}}
        )

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        now = datetime.now(UTC).isoformat()
        details = {"format": "gguf", "family": "qwen2"}
        models = [
            {"name": n, "model": n, "modified_at": now, "size": 1, "digest": "0", "details": details}
            for n in self.pulled
        ]
        return web.json_response({"models": models})
