"""A fake Slack Web API on loopback that records every call Switchboard makes.

    async with FakeSlack() as slack:              # slack.base_url ends in /api
        slack.rate_limit("chat.update", retry_after="1")   # the next chat.update answers 429
        slack.fail("chat.update", "cant_update_message")   # the next one HTTP 200 + ok:false
        slack.auth_fails = True                   # auth.test answers ok:false (invalid_auth)

Socket Mode: `apps.connections.open` (with `APP_TOKEN`) answers the URL of the fake's WebSocket
gateway, which says `hello`, then sends what `slack.push(envelope)` queues and records every
acknowledgement in `slack.acks` (envelope id -> the ack). `slack.drop()` closes the open
connection (the next one is made again by the client); `slack.say_disconnect()` sends Slack's
`disconnect` message instead; `slack.connections` counts connections made. Envelopes not
acknowledged when a connection ends are sent again on the next one, with `retry_attempt` + 1.

`slack.pause_after("chat.update:429")` is how long the next call waited after a 429.
`slack.of("chat.update")` lists the JSON bodies of the accepted calls of a method; a 429 is
recorded as "chat.update:429" in `slack.calls`. Deleted messages are remembered: updating one
answers `message_not_found`, like Slack.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import orjson
from aiohttp import web

from tests.platforms.slack.slack_kit import APP_TOKEN, BOT_ID, BOT_USER, TOKEN
from tests.servers import serve_aiohttp


class FakeSlack:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.stamps: list[float] = []  # time.monotonic() of each entry of `calls`
        self.content_types: list[str] = []
        self.rate_limits: dict[str, list[str]] = {}  # method -> Retry-After values of the next 429s
        self.failures: dict[str, list[str]] = {}  # method -> errors of the next ok:false answers
        self.auth_fails = False
        self.deleted: set[str] = set()
        self._ts = itertools.count(1)
        self.acks: dict[str, dict[str, Any]] = {}
        self.connections = 0
        self.unacked: list[dict[str, Any]] = []  # sent on the open connection, not acknowledged yet
        self._outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._ws: web.WebSocketResponse | None = None
        self.threads: dict[str, list[dict[str, Any]]] = {}  # thread ts -> its messages (conversations.replies)
        self.users: dict[str, dict[str, Any]] = {}  # user id -> users.info's `user`
        self.base_url = ""
        self._cm: Any = None

    async def __aenter__(self) -> FakeSlack:
        app = web.Application()
        app.router.add_post("/api/apps.connections.open", self._open)
        app.router.add_get("/link", self._link)
        app.router.add_post("/api/{method}", self._call)
        app.router.add_get("/api/{method}", self._read)
        self._cm = serve_aiohttp(app)
        self.base_url = (await self._cm.__aenter__()) + "/api"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)

    # -- Socket Mode -------------------------------------------------------------------------

    def push(self, envelope: dict[str, Any]) -> None:
        self._outbox.put_nowait(envelope)

    async def drop(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    def say_disconnect(self) -> None:
        self._outbox.put_nowait({"type": "disconnect", "reason": "refresh_requested"})

    async def wait_acks(self, n: int, timeout: float = 10.0) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.acks) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.acks

    async def wait_connections(self, n: int, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while self.connections < n and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.connections

    async def _open(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {APP_TOKEN}":
            return web.json_response({"ok": False, "error": "not_allowed_token_type"})
        self.calls.append(("apps.connections.open", {}))
        self.stamps.append(time.monotonic())
        url = str(request.url.with_path("/link").with_scheme("ws").with_query({}))
        return web.json_response({"ok": True, "url": url})

    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._ws = ws
        self.connections += 1
        for envelope in self.unacked:  # what the last connection left unacknowledged comes again
            envelope["retry_attempt"] = envelope.get("retry_attempt", 0) + 1
            self._outbox.put_nowait(envelope)
        self.unacked = []
        await ws.send_json({"type": "hello", "num_connections": 1})

        async def sender() -> None:
            while True:
                item = await self._outbox.get()
                if item is None:
                    return
                if "envelope_id" in item:
                    self.unacked.append(item)
                await ws.send_json(item)

        task = asyncio.create_task(sender())
        try:
            async for frame in ws:
                ack = orjson.loads(frame.data)
                self.acks[ack["envelope_id"]] = ack
                self.unacked = [e for e in self.unacked if e["envelope_id"] != ack["envelope_id"]]
        finally:
            task.cancel()
            self._ws = None
        return ws

    def rate_limit(self, method: str, retry_after: str = "0", times: int = 1) -> None:
        self.rate_limits.setdefault(method, []).extend([retry_after] * times)

    def fail(self, method: str, error: str) -> None:
        self.failures.setdefault(method, []).append(error)

    def of(self, method: str) -> list[dict[str, Any]]:
        return [b for m, b in self.calls if m == method]

    def pause_after(self, method: str) -> float:
        """Seconds between the first `method` call and the call that followed it."""
        names = [m for m, _ in self.calls]
        at = names.index(method)
        return self.stamps[at + 1] - self.stamps[at]

    def texts(self, method: str) -> list[str]:
        return [b["text"] for b in self.of(method)]

    async def _call(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"ok": False, "error": "not_authed"})
        self.content_types.append(request.headers.get("Content-Type", ""))
        body = await request.json()
        if self.rate_limits.get(method):
            retry_after = self.rate_limits[method].pop(0)
            self.calls.append((method + ":429", body))
            self.stamps.append(time.monotonic())
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": retry_after}
            )
        self.calls.append((method, body))
        self.stamps.append(time.monotonic())
        if self.failures.get(method):
            return web.json_response({"ok": False, "error": self.failures[method].pop(0)})
        return web.json_response(self._answer(method, body))

    async def _read(self, request: web.Request) -> web.Response:
        """The read methods, called with GET and query arguments."""
        method, args = request.match_info["method"], dict(request.query)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"ok": False, "error": "not_authed"})
        self.calls.append((method, args))
        self.stamps.append(time.monotonic())
        if self.failures.get(method):
            return web.json_response({"ok": False, "error": self.failures[method].pop(0)})
        if method == "conversations.replies":
            messages = self.threads.get(args.get("ts", ""))
            if messages is None:
                return web.json_response({"ok": False, "error": "thread_not_found"})
            start = int(args.get("cursor") or 0)  # pages of `limit`, the cursor an offset
            limit = int(args.get("limit") or 1000)
            page = messages[start : start + limit]
            more = start + limit < len(messages)
            meta = {"next_cursor": str(start + limit) if more else ""}
            return web.json_response({"ok": True, "messages": page, "has_more": more, "response_metadata": meta})
        if method == "users.info":
            user = self.users.get(args.get("user", ""))
            return web.json_response({"ok": True, "user": user} if user else {"ok": False, "error": "user_not_found"})
        return web.json_response({"ok": False, "error": "unknown_method"})

    def _answer(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            if self.auth_fails:
                return {"ok": False, "error": "invalid_auth"}
            return {"ok": True, "url": "https://acme.slack.com/", "team": "Acme", "user": "switchboard",
                    "team_id": "T0TEAM001", "user_id": BOT_USER, "bot_id": BOT_ID}  # fmt: skip
        if method == "chat.postMessage":
            ts = f"1700000000.{next(self._ts):06d}"
            return {"ok": True, "channel": body["channel"], "ts": ts, "message": {"text": body["text"], "ts": ts}}
        if method in ("chat.update", "chat.delete") and body.get("ts") in self.deleted:
            return {"ok": False, "error": "message_not_found"}
        if method == "chat.delete":
            self.deleted.add(body["ts"])
        return {"ok": True, "channel": body.get("channel"), "ts": body.get("ts")}
