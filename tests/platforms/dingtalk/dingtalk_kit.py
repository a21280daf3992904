"""Shared pieces of the DingTalk tests: signed headers, recorded payloads, a fake sessionWebhook."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.servers import serve_aiohttp

SECRET = "dt-app-secret-123"
PAYLOADS = Path(__file__).parent / "payloads"
REAL_WEBHOOK = "https://oapi.dingtalk.com/robot/sendBySession?session=c5d6f7a8b9e0d1c2b3a4f5e6d7c8b9a0"


def now_ms() -> int:
    return int(time.time() * 1000)


def signed_headers(ts_ms: int | None = None, secret: str = SECRET) -> dict[str, str]:
    """timestamp + sign as DingTalk sends them: base64(HMAC-SHA256(secret, ts + "\\n" + secret))."""
    ts = str(now_ms() if ts_ms is None else ts_ms)
    mac = hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()
    return {"timestamp": ts, "sign": base64.b64encode(mac).decode(), "content-type": "application/json"}


def payload(name: str, **overrides: Any) -> dict[str, Any]:
    """A recorded callback body, re-dated to now (expiring in 90 minutes, like DingTalk's)."""
    body = json.loads((PAYLOADS / f"{name}.json").read_text())
    created = now_ms()
    body.update(createAt=created, sessionWebhookExpiredTime=created + 90 * 60 * 1000)
    body.update(overrides)
    return body


class FakeWebhook:
    """A loopback sessionWebhook that records every POST and answers `errcode`."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.errcode = 0
        self.url = ""

    async def __aenter__(self) -> FakeWebhook:
        app = web.Application()

        async def receive(request: web.Request) -> web.Response:
            self.posts.append(await request.json())
            return web.json_response({"errcode": self.errcode, "errmsg": "ok" if not self.errcode else "bad"})

        async def anything_else(request: web.Request) -> web.Response:
            self.posts.append({"unexpected": request.path})
            return web.json_response({"errcode": 0})

        app.router.add_post("/robot/sendBySession", receive)
        app.router.add_route("*", "/{tail:.*}", anything_else)
        self._cm = serve_aiohttp(app)
        self.base = await self._cm.__aenter__()
        self.url = self.base + "/robot/sendBySession?session=abc"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)


CLIENT_ID = "dingclientid0001"


class FakeStreamGateway:
    """DingTalk's Stream gateway on loopback: `POST /v1.0/gateway/connections/open` (checks the
    ClientID/ClientSecret, answers an endpoint and a ticket), and the WebSocket endpoint (checks
    the ticket), which sends what `push(frame)` queues and records every acknowledgement in
    `acks` (messageId -> ack). `drop()` closes the connection; `disconnect()` sends the SYSTEM
    `disconnect` frame; `connections` counts connections made. Callback frames not acknowledged
    when a connection ends are sent again on the next one."""

    def __init__(self) -> None:
        self.acks: dict[str, dict[str, Any]] = {}
        self.opens: list[dict[str, Any]] = []
        self.connections = 0
        self.unacked: list[dict[str, Any]] = []
        self._tickets: set[str] = set()
        #: AI-card calls: (method, path, body), with the access token checked
        self.cards: list[tuple[str, str, dict[str, Any]]] = []
        self.tokens_issued = 0
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._ws: web.WebSocketResponse | None = None
        self.base = ""

    async def __aenter__(self) -> FakeStreamGateway:
        app = web.Application()
        app.router.add_post("/v1.0/gateway/connections/open", self._open)
        app.router.add_get("/connect", self._connect)
        app.router.add_post("/v1.0/oauth2/accessToken", self._token)
        app.router.add_route("*", "/v1.0/card/{tail:.*}", self._card)
        self._cm = serve_aiohttp(app)
        self.base = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)

    def push(self, frame: dict[str, Any]) -> None:
        self._outbox.put_nowait(frame)

    def bot_message(self, message_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "specVersion": "1.0",
            "type": "CALLBACK",
            "headers": {
                "messageId": message_id,
                "topic": "/v1.0/im/bot/messages/get",
                "contentType": "application/json",
                "time": str(now_ms()),
            },
            "data": json.dumps(body),
        }

    def ping(self, message_id: str) -> dict[str, Any]:
        data = json.dumps({"opaque": message_id})
        return {
            "specVersion": "1.0",
            "type": "SYSTEM",
            "headers": {"messageId": message_id, "topic": "ping"},
            "data": data,
        }

    def disconnect(self) -> None:
        self.push(
            {
                "specVersion": "1.0",
                "type": "SYSTEM",
                "headers": {"messageId": "bye", "topic": "disconnect"},
                "data": "{}",
            }
        )

    async def drop(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def wait(self, what: str, n: int, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while len(getattr(self, what)) < n if what == "acks" else getattr(self, what) < n:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        return getattr(self, what)

    async def _token(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body != {"appKey": CLIENT_ID, "appSecret": SECRET}:
            return web.json_response({"code": "invalidClientId"}, status=400)
        self.tokens_issued += 1
        return web.json_response({"accessToken": f"at-{self.tokens_issued}", "expireIn": 7200})

    async def _card(self, request: web.Request) -> web.Response:
        if request.headers.get("x-acs-dingtalk-access-token") != f"at-{self.tokens_issued}":
            return web.json_response({"code": "InvalidAuthentication"}, status=401)
        self.cards.append((request.method, request.path, await request.json()))
        return web.json_response({"success": True, "result": {}})

    async def _open(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.opens.append(body)
        if body.get("clientId") != CLIENT_ID or body.get("clientSecret") != SECRET:
            return web.json_response({"code": "invalidClient", "message": "bad credentials"}, status=401)
        ticket = f"ticket-{len(self.opens)}"
        self._tickets.add(ticket)
        return web.json_response({"endpoint": self.base.replace("http", "ws", 1) + "/connect", "ticket": ticket})

    async def _connect(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("ticket") not in self._tickets:
            return web.Response(status=401)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._ws = ws
        self.connections += 1
        for frame in self.unacked:
            self._outbox.put_nowait(frame)
        self.unacked = []

        async def sender() -> None:
            while True:
                frame = await self._outbox.get()
                if frame["type"] == "CALLBACK":
                    self.unacked.append(frame)
                await ws.send_json(frame)

        task = asyncio.create_task(sender())
        try:
            async for message in ws:
                ack = json.loads(message.data)
                self.acks[ack["headers"]["messageId"]] = ack
                self.unacked = [f for f in self.unacked if f["headers"]["messageId"] != ack["headers"]["messageId"]]
        finally:
            task.cancel()
            self._ws = None
        return ws
