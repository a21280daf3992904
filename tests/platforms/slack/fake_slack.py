"""A fake Slack Web API on loopback that records every call Switchboard makes.

    async with FakeSlack() as slack:              # slack.base_url ends in /api
        slack.rate_limit("chat.update", retry_after="1")   # the next chat.update answers 429
        slack.fail("chat.update", "cant_update_message")   # the next one HTTP 200 + ok:false
        slack.auth_fails = True                   # auth.test answers ok:false (invalid_auth)

`slack.pause_after("chat.update:429")` is how long the next call waited after a 429.
`slack.of("chat.update")` lists the JSON bodies of the accepted calls of a method; a 429 is
recorded as "chat.update:429" in `slack.calls`. Deleted messages are remembered: updating one
answers `message_not_found`, like Slack.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from aiohttp import web

from tests.platforms.slack.slack_kit import BOT_ID, BOT_USER, TOKEN
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
