"""A tiny fake Slack Web API for the webhook bench: every method answers `ok`, and
GET /stats tells how many calls of each method arrived (so the bench can see the replies that
the generations delivered). GET /stats/threads tells, per thread (the event's ts), how many
placeholders were posted and how many final answers (an edit not ending in " …") arrived, with
the wall time of the first placeholder and of the last final answer: what "each event answered
exactly once" is checked on. Message ts are unique (a counter).

    python bench/fake_slack.py      # prints "READY <port>" once listening
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections import Counter

import orjson
from aiohttp import web


async def api(request: web.Request) -> web.Response:
    method = request.match_info["tail"].rstrip("/").rsplit("/", 1)[-1]
    request.app["calls"][method] += 1
    raw = await request.read()
    ts = f"{int(time.time())}.{next(request.app['ts']):06d}"
    if method in ("chat.postMessage", "chat.update"):
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = {}
        threads = request.app["threads"]
        if method == "chat.postMessage" and body.get("thread_ts"):
            request.app["thread_of"][ts] = body["thread_ts"]
            record = threads.setdefault(body["thread_ts"], [0, 0, time.time(), None])
            record[0] += 1
        elif method == "chat.update" and not str(body.get("text", "")).endswith(" …"):
            thread = request.app["thread_of"].get(body.get("ts"))
            if thread is not None:
                record = threads.setdefault(thread, [0, 0, None, None])
                record[1] += 1
                record[3] = time.time()
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


async def threads(request: web.Request) -> web.Response:
    data = {
        t: {"posted": p, "finals": f, "posted_at": first, "final_at": last}
        for t, (p, f, first, last) in request.app["threads"].items()
    }
    return web.Response(body=orjson.dumps(data), content_type="application/json")


def main() -> None:
    app = web.Application()
    app["calls"] = Counter()
    app["ts"] = itertools.count(1)
    app["threads"] = {}
    app["thread_of"] = {}
    app.router.add_get("/stats", stats)
    app.router.add_get("/stats/threads", threads)
    app.router.add_route("*", "/{tail:.*}", api)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(f"READY {sock.getsockname()[1]}", flush=True)
    web.run_app(app, sock=sock, access_log=None, print=None, loop=asyncio.new_event_loop())


if __name__ == "__main__":
    main()
