"""A fake OpenAI-compatible upstream on loopback, with fault injection.

    async with FakeOpenAI() as fake:               # fake.base_url ends in /v1
        fake.fail(500)                             # the next request answers 500
        fake.fail(429, headers={"Retry-After": "0"}, times=2)
        fake.quota()                               # 429 insufficient_quota
        fake.hang(5)                               # the next request waits 5 s before answering
        fake.die_after(2)                          # the next stream breaks after 2 content chunks
        fake.stall_after(1, 5)                     # the next stream pauses 5 s after 1 content chunk
        fake.error_in_stream()                     # an {"error": ...} chunk inside a 200 stream
        fake.html(502)                             # a CDN's HTML error page
        fake.raw_stream(b"data:{...}\n\n")         # the next stream is exactly these bytes
        fake.tool_call("get_weather", '{"city": "Paris"}')  # the next answer calls a tool

Faults are queued: each request takes the next one. Default answer: "upstream: <last user text>"
(or `answer=`), streamed as a role chunk, content chunks (word by word, or `chunks=N` equal
pieces), a finish chunk, a usage chunk when `stream_options.include_usage`, then `[DONE]`.
Like the real API, a non-numeric `temperature` is answered 400 `invalid_type` (param
`temperature`), and with `context_limit=N` a prompt of more than N characters is answered 400
`context_length_exceeded`.
`fake.requests` records every request (path, headers, json); `fake.key_rejected` makes a key
answer 401 forever, `fake.key_rate_limited` 429 with Retry-After 60. `image_b64=True` makes the
images endpoint answer `b64_json` instead of URLs. `GET /v1/models` lists `fake.models` (ids) and
takes the key checks and queued faults too.
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
from multidict import CIMultiDict

from tests.servers import serve_aiohttp

SERVER_ERROR = "The server had an error while processing your request."


@dataclass
class Fault:
    kind: str  # status | hang | die | stall | stream_error | html | raw | tool
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    after: int = 0


@dataclass
class Recorded:
    path: str
    headers: CIMultiDict[str]
    json: Any

    @property
    def key(self) -> str:
        return self.headers.get("Authorization", "").removeprefix("Bearer ")


def error_body(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class FakeOpenAI:
    def __init__(
        self,
        answer: str | None = None,
        chunk_delay: float = 0.0,
        chunks: int | None = None,
        image_b64: bool = False,
        context_limit: int | None = None,
    ) -> None:
        self.answer = answer
        self.context_limit = context_limit
        self.chunk_delay = chunk_delay
        self.chunks = chunks
        self.image_b64 = image_b64
        self.faults: deque[Fault] = deque()
        self.requests: list[Recorded] = []
        self.streams_done = 0  # streams sent to the end
        self.streams_cut = 0  # streams whose client (Switchboard) hung up before the end
        self.key_rejected: set[str] = set()
        self.key_rate_limited: set[str] = set()
        self.models: list[str] = ["gpt-fake"]
        self.flagged_words: set[str] = {"forbidden"}  # what /v1/moderations flags
        self.base_url = ""
        self._cm: Any = None

    # -- fault injection -----------------------------------------------------------------------

    def fail(self, status: int, body: Any = None, headers: dict[str, str] | None = None, times: int = 1) -> None:
        if body is None:
            body = error_body(f"fake failure {status}", "server_error", None)
        for _ in range(times):
            self.faults.append(Fault("status", status, body, headers or {}))

    def quota(self) -> None:
        self.fail(429, error_body("You exceeded your current quota.", "insufficient_quota", "insufficient_quota"))

    def hang(self, seconds: float) -> None:
        self.faults.append(Fault("hang", seconds=seconds))

    def die_after(self, chunks: int) -> None:
        self.faults.append(Fault("die", after=chunks))

    def stall_after(self, chunks: int, seconds: float) -> None:
        self.faults.append(Fault("stall", after=chunks, seconds=seconds))

    def error_in_stream(self, after: int = 1, code: str | None = None, message: str = SERVER_ERROR) -> None:
        self.faults.append(Fault("stream_error", after=after, body=error_body(message, "server_error", code)))

    def html(self, status: int = 502) -> None:
        self.faults.append(Fault("html", status))

    def raw_stream(self, data: bytes) -> None:
        self.faults.append(Fault("raw", body=data))

    def tool_call(self, name: str, arguments: str) -> None:
        self.faults.append(Fault("tool", body=(name, arguments)))

    # -- server ------------------------------------------------------------------------------

    async def __aenter__(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/images/generations", self._images)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/moderations", self._moderations)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
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

    def _pieces(self, text: str) -> list[str]:
        if not self.chunks:
            words = text.split(" ")
            return [w if i == 0 else " " + w for i, w in enumerate(words)]
        size = max(1, -(-len(text) // self.chunks))
        return [text[i : i + size] for i in range(0, len(text), size)] or [""]

    async def _gate(self, request: web.Request) -> tuple[dict[str, Any], Fault | None, web.StreamResponse | None]:
        """Record the request; answer early (status, auth, html) or hand the fault to the body."""
        body = await request.json() if request.can_read_body else {}
        self.requests.append(Recorded(request.path, CIMultiDict(request.headers), body))
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if key in self.key_rejected:
            rejected = error_body("Incorrect API key provided", "invalid_request_error", "invalid_api_key")
            return body, None, web.json_response(rejected, status=401)
        if key in self.key_rate_limited:
            limited = error_body("Rate limit reached", "requests", "rate_limit_exceeded")
            return body, None, web.json_response(limited, status=429, headers={"Retry-After": "60"})
        invalid = self._invalid(body)
        if invalid is not None:
            return body, None, web.json_response(invalid, status=400)
        fault = self.faults.popleft() if self.faults else None
        if fault is None:
            return body, None, None
        if fault.kind == "status":
            return body, None, web.json_response(fault.body, status=fault.status, headers=fault.headers)
        if fault.kind == "html":
            page = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
            return body, None, web.Response(text=page, status=fault.status, content_type="text/html")
        if fault.kind == "hang":
            await asyncio.sleep(fault.seconds)
            return body, None, None
        return body, fault, None

    def _invalid(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The request checks the real API makes (the ones tests need)."""
        temperature = body.get("temperature")
        if "temperature" in body and (not isinstance(temperature, (int, float)) or isinstance(temperature, bool)):
            got = type(temperature).__name__
            message = f"Invalid type for 'temperature': expected a decimal, but got a {got} instead."
            return {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": "temperature",
                    "code": "invalid_type",
                }
            }
        size = sum(len(str(m.get("content") or "")) for m in body.get("messages") or [] if isinstance(m, dict))
        if self.context_limit is not None and size > self.context_limit:
            message = (
                f"This model's maximum context length is {self.context_limit} tokens. However, your messages "
                f"resulted in {size} tokens. Please reduce the length of the messages."
            )
            return {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            }
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, fault, early = await self._gate(request)
        if early is not None:
            return early
        text = self._text_for(body)
        if body.get("stream"):
            return await self._stream(request, body, text, fault)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        finish = "stop"
        if fault is not None and fault.kind == "tool":
            name, arguments = fault.body
            message = {"role": "assistant", "content": None, "tool_calls": [_tool(name, arguments)]}
            finish = "tool_calls"
        words = len(text.split())
        return web.json_response(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": 5, "completion_tokens": words, "total_tokens": 5 + words},
            }
        )

    async def _stream(
        self, request: web.Request, body: dict[str, Any], text: str, fault: Fault | None
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if fault is not None and fault.kind == "raw":
            await resp.write(fault.body)
            return resp
        head = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": body.get("model")}

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")

        try:
            return await self._stream_body(resp, request, body, text, send, head, fault)
        except ConnectionError:
            self.streams_cut += 1
            return resp

    async def _stream_body(
        self,
        resp: web.StreamResponse,
        request: web.Request,
        body: dict[str, Any],
        text: str,
        send: Any,
        head: dict[str, Any],
        fault: Fault | None,
    ) -> web.StreamResponse:
        await send({"role": "assistant", "content": ""})
        if fault is not None and fault.kind == "tool":
            return await self._stream_tool(resp, send, *fault.body)
        pieces = self._pieces(text)
        for i, piece in enumerate(pieces):
            if fault is not None and i == fault.after:
                if fault.kind == "stream_error":
                    await resp.write(b"data: " + orjson.dumps(fault.body) + b"\n\n")
                    return resp
                if fault.kind == "die":
                    with contextlib.suppress(Exception):
                        request.transport.close()  # type: ignore[union-attr]
                    return resp
                if fault.kind == "stall":
                    await asyncio.sleep(fault.seconds)
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            await send({"content": piece})
        await send({}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 5, "completion_tokens": len(pieces), "total_tokens": 5 + len(pieces)}
            await resp.write(b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        self.streams_done += 1
        return resp

    async def _stream_tool(self, resp: web.StreamResponse, send: Any, name: str, arguments: str) -> web.StreamResponse:
        first = _tool(name, "")
        await send({"tool_calls": [{"index": 0, **first}]})
        half = len(arguments) // 2
        for part in (arguments[:half], arguments[half:]):
            await send({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
        await send({}, "tool_calls")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def _images(self, request: web.Request) -> web.StreamResponse:
        body, _, early = await self._gate(request)
        if early is not None:
            return early
        n = int(body.get("n") or 1)
        if self.image_b64:
            data = [{"b64_json": f"aW1hZ2U{i}"} for i in range(n)]
        else:
            prompt = str(body.get("prompt"))
            data = [{"url": f"https://images.example/{i}.png", "revised_prompt": prompt} for i in range(n)]
        return web.json_response({"created": int(time.time()), "data": data})

    async def _transcriptions(self, request: web.Request) -> web.StreamResponse:
        """Multipart: records the fields (the file as `{"filename", "content_type", "size"}`) and
        answers `{"text": "heard <size> bytes of <filename>"}` (plain text for
        `response_format=text`)."""
        form = await request.post()
        fields: dict[str, Any] = {}
        for name, value in form.items():
            if isinstance(value, web.FileField):
                size = len(value.file.read())
                fields[name] = {"filename": value.filename, "content_type": value.content_type, "size": size}
            else:
                fields[name] = value
        self.requests.append(Recorded(request.path, CIMultiDict(request.headers), fields))
        if self.faults:
            fault = self.faults.popleft()
            return web.json_response(error_body(SERVER_ERROR, "server_error", None), status=fault.status)
        file = fields.get("file") or {}
        text = f"heard {file.get('size')} bytes of {file.get('filename')}"
        if fields.get("response_format") == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        return web.json_response({"text": text})

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, _, early = await self._gate(request)
        if early is not None:
            return early
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)) else inputs
        size = int(body.get("dimensions") or 3)
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(x)), float(i), *[0.5] * (size - 2)]}
            for i, x in enumerate(inputs)
        ]
        data.reverse()  # `index` says which input each vector is for
        words = sum(len(x.split()) if isinstance(x, str) else len(x) for x in inputs)
        usage = {"prompt_tokens": words, "total_tokens": words}
        return web.json_response({"object": "list", "data": data, "model": body.get("model"), "usage": usage})

    async def _moderations(self, request: web.Request) -> web.StreamResponse:
        body, _, early = await self._gate(request)
        if early is not None:
            return early
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        results = [
            {"flagged": any(w in x.lower() for w in self.flagged_words), "categories": {}, "category_scores": {}}
            for x in inputs
        ]
        return web.json_response({"id": "modr-fake", "model": body.get("model") or "omni-moderation-latest", "results": results})

    async def _models(self, request: web.Request) -> web.StreamResponse:
        _, _, early = await self._gate(request)
        if early is not None:
            return early
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})


def _tool(name: str, arguments: str) -> dict[str, Any]:
    return {"id": "call_fake1", "type": "function", "function": {"name": name, "arguments": arguments}}
