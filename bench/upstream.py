"""The bench's fake OpenAI-compatible upstream: raw aiohttp.web, canned answers, no logic.

POST /v1/chat/completions answers a canned chat completion, or with `"stream": true` an SSE
stream of 20 content chunks (+ a finish chunk, a usage chunk and `[DONE]`).

The model name picks the pacing, so every target can reach both behaviours through one base
URL: model `slow` streams 50 chunks, one every 100 ms (on a fixed schedule from the first
chunk, so a late chunk does not push the next ones back), and puts the upstream's send time
(`time.monotonic_ns()`, a clock shared by all processes on the machine) in each chunk's text;
any other model streams without delay (`--chunk-delay` adds one to every stream).

    python bench/upstream.py --port 0      # prints "READY <port>" once listening
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time

import orjson
from aiohttp import web

CHUNKS = 20
SLOW_MODEL = "slow"
SLOW_INTERVAL = 0.1
SLOW_CHUNKS = 50  # 5 s: long enough that 1,000 streams started over 1 s are all open together
WORD = "lorem "

COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": WORD * CHUNKS}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": CHUNKS, "total_tokens": 10 + CHUNKS},
    }
)
SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache"}


def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


USAGE = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "m",
        "choices": [],
        "usage": {"prompt_tokens": 10, "completion_tokens": CHUNKS, "total_tokens": 10 + CHUNKS},
    }
)
FIRST = chunk({"role": "assistant", "content": ""})
FAST_STREAM = chunk({"content": WORD}) * CHUNKS
STREAM_TAIL = chunk({}, "stop") + b"data: " + USAGE + b"\n\ndata: [DONE]\n\n"


async def completions(request: web.Request) -> web.StreamResponse:
    data = orjson.loads(await request.read())
    if not data.get("stream"):
        return web.Response(body=COMPLETION, content_type="application/json")
    resp = web.StreamResponse(headers=SSE_HEADERS)
    try:
        await stream(request, resp, data)
    except ConnectionError:  # the client hung up mid-stream (wrk does at the end of a run)
        pass
    return resp


async def stream(request: web.Request, resp: web.StreamResponse, data: dict[str, object]) -> None:
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(FIRST)
    delay: float = request.app["chunk_delay"]
    if data.get("model") == SLOW_MODEL:
        start = time.monotonic()
        for i in range(SLOW_CHUNKS):
            wait = start + i * SLOW_INTERVAL - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await resp.write(chunk({"content": f"{time.monotonic_ns()} "}))
    elif delay > 0:
        for _ in range(CHUNKS):
            await asyncio.sleep(delay)
            await resp.write(chunk({"content": WORD}))
    else:
        await resp.write(FAST_STREAM)
    await resp.write(STREAM_TAIL)
    await resp.write_eof()


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "bench"}]})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between chunks of every stream")
    args = parser.parse_args()
    app = web.Application()
    app["chunk_delay"] = args.chunk_delay
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/v1/models", models)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    print(f"READY {sock.getsockname()[1]}", flush=True)
    web.run_app(app, sock=sock, access_log=None, print=None, backlog=4096, loop=new_loop())


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


if __name__ == "__main__":
    main()
