"""A fake OpenAI-compatible upstream on loopback, with fault injection.

    async with FakeOpenAI() as fake:               # fake.base_url ends in /v1
        fake.fail(500)                             # the next request answers 500
        fake.fail(429, headers={"Retry-After": "0"}, times=2)
        fake.quota()                               # 429 insufficient_quota
        fake.hang(5)                               # the next request waits 5 s before answering
        fake.die_after(2)                          # the next stream breaks after 2 content chunks
        fake.error_in_stream()                     # an {"error": ...} chunk inside a 200 stream
        fake.html(502)                             # a CDN's HTML error page

Default answer: "upstream: <last user text>" (or `fake.answer`), streamed word by word.
`fake.requests` records every request (path, headers, json); `fake.key_rejected` makes one API key
answer 401 forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.servers import serve_aiohttp


@dataclass
class Fault:
    kind: str  # status | hang | die | stream_error | html
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    after: int = 0


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    json: Any

    @property
    def key(self) -> str:
        return self.headers.get("Authorization", "").removeprefix("Bearer ")


class FakeOpenAI:
    def __init__(self, answer: str | None = None, chunk_delay: float = 0.0) -> None:
        self.answer = answer
        self.chunk_delay = chunk_delay
        self.faults: deque[Fault] = deque()
        self.requests: list[Recorded] = []
        self.key_rejected: set[str] = set()
        self.key_rate_limited: set[str] = set()
        self.base_url = ""
        self._cm: Any = None

    # -- fault injection -----------------------------------------------------------------------

    def fail(self, status: int, body: Any = None, headers: dict[str, str] | None = None, times: int = 1) -> None:
        body = (
            body
            if body is not None
            else {"error": {"message": f"fake failure {status}", "type": "server_error", "code": None}}
        )
        for _ in range(times):
            self.faults.append(Fault("status", status, body, headers or {}))

    def quota(self) -> None:
        self.fail(
            429,
            {
                "error": {
                    "message": "You exceeded your current quota.",
                    "type": "insufficient_quota",
                    "code": "insufficient_quota",
                }
            },
        )

    def hang(self, seconds: float) -> None:
        self.faults.append(Fault("hang", seconds=seconds))

    def die_after(self, chunks: int) -> None:
        self.faults.append(Fault("die", after=chunks))

    def error_in_stream(self, after: int = 1) -> None:
        self.faults.append(Fault("stream_error", after=after))

    def html(self, status: int = 502) -> None:
        self.faults.append(Fault("html", status))

    # -- server ------------------------------------------------------------------------------

    async def __aenter__(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/images/generations", self._images)
        app.router.add_get("/v1/models", self._models)
        self._cm = serve_aiohttp(app)
        self.base_url = (await self._cm.__aenter__()) + "/v1"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)

    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def _text_for(self, body: dict[str, Any]) -> str:
        if self.answer is not None:
            return self.answer
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        content = users[-1].get("content", "") if users else ""
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return f"upstream: {content}"

    async def _gate(self, request: web.Request) -> tuple[dict[str, Any], Fault | None, web.StreamResponse | None]:
        body = await request.json()
        self.requests.append(Recorded(request.path, dict(request.headers), body))
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if key in self.key_rejected:
            return (
                body,
                None,
                web.json_response(
                    {
                        "error": {
                            "message": "Incorrect API key provided",
                            "type": "invalid_request_error",
                            "code": "invalid_api_key",
                        }
                    },
                    status=401,
                ),
            )
        if key in self.key_rate_limited:
            return (
                body,
                None,
                web.json_response(
                    {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
                    status=429,
                    headers={"Retry-After": "60"},
                ),
            )
        fault = self.faults.popleft() if self.faults else None
        if fault is None:
            return body, None, None
        if fault.kind == "status":
            return body, None, web.json_response(fault.body, status=fault.status, headers=fault.headers)
        if fault.kind == "html":
            return (
                body,
                None,
                web.Response(
                    text="<html><body><h1>502 Bad Gateway</h1></body></html>",
                    status=fault.status,
                    content_type="text/html",
                ),
            )
        if fault.kind == "hang":
            await asyncio.sleep(fault.seconds)
            return body, None, None
        return body, fault, None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, fault, early = await self._gate(request)
        if early is not None:
            return early
        text = self._text_for(body)
        if not body.get("stream"):
            words = len(text.split())
            return web.json_response(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": words, "total_tokens": 5 + words},
                }
            )
        return await self._stream(request, body, text, fault)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], text: str, fault: Fault | None
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        head = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model"),
        }

        async def send(obj: Any) -> None:
            await resp.write(b"data: " + orjson.dumps(obj) + b"\n\n")

        await send(
            {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        )
        words = text.split(" ")
        for i, word in enumerate(words):
            if fault is not None and i == fault.after:
                if fault.kind == "stream_error":
                    await send(
                        {
                            "error": {
                                "message": "The server had an error while processing your request.",
                                "type": "server_error",
                            }
                        }
                    )
                    return resp
                with contextlib.suppress(Exception):
                    request.transport.close()  # type: ignore[union-attr]
                return resp
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            await send(
                {
                    **head,
                    "choices": [
                        {"index": 0, "delta": {"content": word if i == 0 else " " + word}, "finish_reason": None}
                    ],
                }
            )
        await send({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            await send(
                {
                    **head,
                    "choices": [],
                    "usage": {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 5 + len(words)},
                }
            )
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def _images(self, request: web.Request) -> web.StreamResponse:
        body, _, early = await self._gate(request)
        if early is not None:
            return early
        n = int(body.get("n") or 1)
        return web.json_response(
            {
                "created": int(time.time()),
                "data": [
                    {"url": f"https://images.example/{i}.png", "revised_prompt": body.get("prompt")} for i in range(n)
                ],
            }
        )

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"object": "list", "data": [{"id": "gpt-fake", "object": "model", "created": 0, "owned_by": "fake"}]}
        )
