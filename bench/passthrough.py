"""The practical ceiling: Switchboard's stack (Starlette + uvicorn + one aiohttp ClientSession)
forwarding POST /v1/chat/completions to the upstream with no logic at all — no auth, no
parsing, no routing. Streams are relayed chunk by chunk as they arrive.

    python bench/passthrough.py --port 8123 --upstream http://127.0.0.1:9000/v1
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def create_app(upstream: str) -> Starlette:
    url = upstream.rstrip("/") + "/chat/completions"
    sessions: list[aiohttp.ClientSession] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sessions.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
        yield
        await sessions[0].close()

    async def relay(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        try:
            async for data in resp.content.iter_any():
                yield data
        finally:
            resp.release()

    async def completions(request: Request) -> Response:
        body = await request.body()
        headers = {"content-type": "application/json", "authorization": request.headers.get("authorization", "")}
        resp = await sessions[0].post(url, data=body, headers=headers)
        kind = resp.headers.get("content-type", "application/json")
        if kind.startswith("text/event-stream"):
            return StreamingResponse(relay(resp), resp.status, media_type="text/event-stream")
        data = await resp.read()
        resp.release()
        return Response(data, resp.status, media_type=kind)

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL ending in /v1")
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.upstream),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
