"""A fake Ollama server on loopback: /api/chat (NDJSON stream or one object), /api/show, /api/tags.

Every streamed line, the final `done: true` one included, carries `message` and `model` — the
minimum LiteLLM's parser needs. `fake.fail_next(status, text)` answers the next chat with an error.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from tests.servers import serve_aiohttp


class FakeOllama:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.failures: list[tuple[int, str]] = []
        self.base_url = ""
        self._cm: Any = None

    def fail_next(self, status: int, text: str) -> None:
        self.failures.append((status, text))

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
        if self.failures:
            status, text = self.failures.pop(0)
            return web.json_response({"error": text}, status=status)
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
        return web.json_response({"models": [{"name": "qwen2.5:latest", "model": "qwen2.5:latest"}]})
