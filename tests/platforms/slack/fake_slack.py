"""A fake Slack Web API on loopback that records every call Switchboard makes."""

from __future__ import annotations

import itertools
from typing import Any

from aiohttp import web

from tests.servers import serve_aiohttp


class FakeSlack:
    def __init__(self, bot_user: str = "UBOT") -> None:
        self.bot_user = bot_user
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.rate_limit_next: dict[str, int] = {}  # method -> how many 429s to answer first
        self.fail_next: dict[str, str] = {}  # method -> error for one ok:false answer
        self._ts = itertools.count(1)
        self.base_url = ""
        self._cm: Any = None

    async def __aenter__(self) -> FakeSlack:
        app = web.Application()
        app.router.add_post("/api/{method}", self._call)
        self._cm = serve_aiohttp(app)
        self.base_url = (await self._cm.__aenter__()) + "/api"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)

    def of(self, method: str) -> list[dict[str, Any]]:
        return [b for m, b in self.calls if m == method]

    async def _call(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        assert request.headers["Authorization"] == "Bearer xoxb-test"
        body = await request.json() if request.can_read_body else {}
        if self.rate_limit_next.get(method):
            self.rate_limit_next[method] -= 1
            self.calls.append((method + ":429", body))
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": "0"})
        self.calls.append((method, body))
        if method in self.fail_next:
            return web.json_response({"ok": False, "error": self.fail_next.pop(method)})
        if method == "auth.test":
            return web.json_response({"ok": True, "user_id": self.bot_user, "bot_id": "BBOT"})
        if method == "chat.postMessage":
            return web.json_response({"ok": True, "channel": body["channel"], "ts": f"1700000000.{next(self._ts):06d}"})
        return web.json_response({"ok": True})
