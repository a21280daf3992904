"""A fake Discord on loopback: the REST API (gateway/bot, messages created and edited with
429s on demand, interaction webhooks, application commands) and a Gateway WebSocket (HELLO,
IDENTIFY → READY, RESUME → the missed events then RESUMED, heartbeats acknowledged) that can
drop the connection, ask for a reconnect or invalidate the session.

More controls: `heartbeat_interval` (ms, in HELLO), `unacked` (connection numbers whose
heartbeats go unanswered), `request_heartbeat()`, `close_on_identify` (a close code for the
next IDENTIFY), `session_starts` (what /gateway/bot says is left), `empty_bucket(verb, s)`
(responses say X-RateLimit-Remaining 0; a request before the bucket refills is answered 429
and recorded in `too_soon`), `dead_tokens` (interaction webhooks answering 404). Recorded: `heartbeats` (their seq), `closes` (the code each
connection was closed with, by whichever side closed it first), `paths` (the URL path each connection used: `/gateway/` from
/gateway/bot, `/resume/` from READY's resume_gateway_url)."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from aiohttp import WSMsgType, web

from tests.servers import serve_aiohttp

TOKEN = "MTA5.fake-bot-token.abcdef"
BOT = "1100000000000000001"
APP = "1200000000000000001"


class FakeDiscord:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.texts: dict[str, str] = {}  # message id (or "@original:<token>") -> its content
        self.events: list[dict[str, Any]] = []  # every dispatch sent or to send, with its seq
        self.identifies: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []
        self.connections = 0
        self.replay_overlap = False  # on RESUME, also replay the last event the bot had (a duplicate)
        self.limits: dict[str, list[float]] = {}  # verb -> retry_after of the next 429s
        self.commands: Any = None
        self.heartbeat_interval = 45000
        self.unacked: set[int] = set()
        self.heartbeats: list[Any] = []
        self.closes: list[int | None] = []
        self.paths: list[str] = []
        self.close_on_identify: int | None = None
        self.session_starts: dict[str, int] = {"total": 1000, "remaining": 999, "reset_after": 14400000}
        self.buckets: dict[str, float] = {}  # verb -> Reset-After seconds every response announces
        self._refill: dict[str, float] = {}  # verb -> monotonic time the bucket is full again
        self.too_soon: list[tuple[str, str]] = []
        self.callbacks: list[Any] = []  # interaction responses made over HTTP (Gateway interactions)
        self.dead_tokens: set[str] = set()  # interaction tokens whose webhooks answer 404 (expired)
        self._ids = itertools.count(900)
        self._seq = itertools.count(1)
        self._ws: web.WebSocketResponse | None = None
        self._ready = asyncio.Event()
        self.base_url = self.api = ""
        self._cm: Any = None

    async def __aenter__(self) -> FakeDiscord:
        app = web.Application()
        app.router.add_get("/gateway/", self._gateway)  # the bot connects to <url>/?v=10&encoding=json
        app.router.add_get("/resume/", self._gateway)  # READY's resume_gateway_url
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        self._cm = serve_aiohttp(app)
        self.base_url = await self._cm.__aenter__()
        self.api = self.base_url + "/api/v10"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._ws is not None:
            await self._ws.close()
        await self._cm.__aexit__(*exc)

    # -- test controls ---------------------------------------------------------------------------

    async def connected(self, n: int = 1) -> None:
        for _ in range(500):
            if self.connections >= n and self._ready.is_set():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the bot did not connect")

    async def dispatch(self, event: str, d: dict[str, Any]) -> None:
        frame = {"op": 0, "t": event, "s": next(self._seq), "d": d}
        self.events.append(frame)
        if self._ws is not None and not self._ws.closed and self._ready.is_set():
            await self._ws.send_json(frame)

    async def drop(self, code: int = 4000) -> None:
        """Close the connection as Discord does on an error the bot may resume after."""
        self._ready.clear()
        if self._ws is not None:
            await self._ws.close(code=code)

    async def send_op(self, op: int, d: Any = None) -> None:
        self._ready.clear()
        assert self._ws is not None
        await self._ws.send_json({"op": op, "d": d})

    async def request_heartbeat(self) -> None:
        assert self._ws is not None
        await self._ws.send_json({"op": 1, "d": None})

    def empty_bucket(self, verb: str, reset_after: float) -> None:
        self.buckets[verb] = reset_after

    def limit(self, verb: str, retry_after: float = 0.2, times: int = 1) -> None:
        self.limits.setdefault(verb, []).extend([retry_after] * times)

    def of(self, verb: str, start: str = "") -> list[Any]:
        return [body for v, path, body in self.calls if v == verb and path.startswith(start)]

    async def wait(self, check: Any, patience: float = 5.0) -> None:
        for _ in range(int(patience / 0.02)):
            if check():
                return
            await asyncio.sleep(0.02)

    # -- Gateway ---------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._ws, self.connections = ws, self.connections + 1
        number, ours = self.connections, None
        self.paths.append(request.path)
        await ws.send_json({"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval}})
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            frame = message.json()
            op, d = frame.get("op"), frame.get("d")
            if op == 1:
                self.heartbeats.append(d)
                if number not in self.unacked:
                    await ws.send_json({"op": 11})
            elif op == 2:
                self.identifies.append(d)
                code, self.close_on_identify = self.close_on_identify, None
                if d.get("token") != TOKEN or code:
                    ours = code or 4004
                    await ws.close(code=ours)
                    break
                ready = {"v": 10, "session_id": f"s{len(self.identifies)}", "user": {"id": BOT, "bot": True},
                         "resume_gateway_url": self.base_url + "/resume"}  # fmt: skip
                self._ready.set()
                await self.dispatch("READY", ready)
            elif op == 6:
                self.resumes.append(d)
                after = int(d.get("seq") or 0) - (1 if self.replay_overlap else 0)
                for event in [e for e in self.events if e["s"] > after and e["t"] != "READY"]:
                    await ws.send_json(event)
                self._ready.set()
                await self.dispatch("RESUMED", {})
        self.closes.append(ours or ws.close_code)  # whoever closed first
        return ws

    # -- REST ------------------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.Response:
        path, verb = "/" + request.match_info["path"], request.method
        body = await request.json() if request.can_read_body else None
        if path.startswith(("/webhooks/", "/interactions/")):  # the interaction token is the key:
            refused = "Authorization" in request.headers  # (stricter than Discord) no bot token sent along
        else:
            refused = request.headers.get("Authorization") != f"Bot {TOKEN}"
        if refused:
            return web.json_response({"message": "401: Unauthorized", "code": 0}, status=401)
        self.calls.append((verb, path, body))
        if self._refill.get(verb, 0.0) > time.monotonic():
            self.too_soon.append((verb, path))
            return web.json_response({"message": "You are being rate limited.", "retry_after": 1.0}, status=429)
        if self.limits.get(verb):
            retry = self.limits[verb].pop(0)
            return web.json_response(
                {"message": "You are being rate limited.", "retry_after": retry, "global": False}, status=429
            )
        response = self._answer(verb, path, body)
        if verb in self.buckets:
            self._refill[verb] = time.monotonic() + self.buckets[verb]
            response.headers.update({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": str(self.buckets[verb])})
        return response

    def _answer(self, verb: str, path: str, body: Any) -> web.Response:
        if verb == "POST" and path.startswith("/interactions/") and path.endswith("/callback"):
            self.callbacks.append(body)
            return web.Response(status=204)
        if path.startswith("/webhooks/") and path.split("/")[3] in self.dead_tokens:
            return web.json_response({"message": "Unknown Webhook", "code": 10015}, status=404)
        if path == "/gateway/bot":
            url = self.base_url + "/gateway"
            return web.json_response({"url": url, "shards": 1, "session_start_limit": self.session_starts})
        if verb == "PUT" and path == f"/applications/{APP}/commands":
            self.commands = body
            return web.json_response(body)
        if (verb == "POST" and path.endswith("/messages")) or (verb == "POST" and path.startswith("/webhooks/")):
            mid = str(next(self._ids))
            self.texts[mid] = body["content"]
            return web.json_response({"id": mid, "content": body["content"]})
        if verb == "PATCH":
            key = path.rsplit("/", 1)[1]
            if key == "@original":
                key = "@original:" + path.split("/")[3]
            self.texts[key] = body["content"]
            return web.json_response({"id": key, "content": body["content"]})
        return web.json_response({"message": "404: Not Found"}, status=404)


def message(
    content: str,
    *,
    mid: str | None = None,
    guild: str | None = None,
    author: str = "2100",
    bot: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": mid or str(3000 + next(_messages)),
        "channel_id": "4000",
        "author": {"id": author, "username": "ana", "global_name": "Ana", **({"bot": True} if bot else {})},
        "content": content,
        "type": 0,
        "mentions": [],
        "attachments": [],
        **extra,
    }
    if guild:
        d["guild_id"] = guild
    return d


_messages = itertools.count(1)
