"""A tiny fake Slack Web API for the webhook bench: every method answers `ok`, and
GET /stats tells how many calls of each method arrived (so the bench can see the replies that
the generations delivered).

    python bench/fake_slack.py      # prints "READY <port>" once listening
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter

import orjson
from aiohttp import web


async def api(request: web.Request) -> web.Response:
    method = request.match_info["tail"].rstrip("/").rsplit("/", 1)[-1]
    request.app["calls"][method] += 1
    await request.read()
    ts = f"{time.time():.6f}"
    body = {
        "ok": True,
        "channel": "CBENCH",
        "ts": ts,
        "user_id": "UBOT",
        "user": "UBOT",
        "bot_id": "BBENCH",
        "team_id": "TBENCH",
        "message": {"type": "message", "ts": ts, "text": ""},
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def stats(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps(dict(request.app["calls"])), content_type="application/json")


def main() -> None:
    app = web.Application()
    app["calls"] = Counter()
    app.router.add_get("/stats", stats)
    app.router.add_route("*", "/{tail:.*}", api)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(f"READY {sock.getsockname()[1]}", flush=True)
    web.run_app(app, sock=sock, access_log=None, print=None, loop=asyncio.new_event_loop())


if __name__ == "__main__":
    main()
