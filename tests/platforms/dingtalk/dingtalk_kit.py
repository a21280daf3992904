"""Shared pieces of the DingTalk tests: signed headers, recorded payloads, a fake sessionWebhook."""

from __future__ import annotations

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
