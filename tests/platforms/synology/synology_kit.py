"""Shared pieces of the Synology tests: recorded form bodies and a fake NAS (entry.cgi bot API and
incoming webhooks) that records every post."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import orjson
from aiohttp import web

from tests.servers import serve_aiohttp

PAYLOADS = Path(__file__).parent / "payloads"
BOT_TOKEN = "Gq3kXbV9mZ2rT7wP1sLc8dN4fH6jY0aE5uR2iO9pK3lM7nB1vC4xZ8qW6eT2yU5o"  # in bot_dm.form
HOOK_TOKEN = "Wb7nQ2xK9mL4pR8sT1vZ6cF3hJ5gD0aE2uY7iO4kP9lM1nB8vC3xZ6qW5eT0yU2r"  # in outgoing_webhook.form


def form(name: str, **overrides: str) -> bytes:
    """A recorded form body, with fields overridden."""
    fields = {k: v[0] for k, v in parse_qs((PAYLOADS / f"{name}.form").read_text(), keep_blank_values=True).items()}
    return urlencode({**fields, **overrides}).encode()


class FakeNAS:
    """`/webapi/entry.cgi` (bot API) and `/incoming/{name}` (incoming webhooks)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.refuse = False  # answer {"success": false, "error": {"code": 117}}

    async def __aenter__(self) -> FakeNAS:
        app = web.Application()
        app.router.add_post("/webapi/entry.cgi", self._entry)
        app.router.add_post("/incoming/{name}", self._incoming)
        self._cm = serve_aiohttp(app)
        self.base = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)

    async def _answer(self, record: dict[str, Any]) -> web.Response:
        self.sent.append(record)
        if self.refuse:
            return web.json_response({"success": False, "error": {"code": 117, "errors": {}}})
        return web.json_response({"success": True, "data": {"succ_list": [{"post_id": 1}]}})

    async def _entry(self, request: web.Request) -> web.Response:
        posted = await request.post()
        return await self._answer(
            {"via": "bot", "query": dict(request.query), "payload": orjson.loads(str(posted["payload"]))}
        )

    async def _incoming(self, request: web.Request) -> web.Response:
        posted = await request.post()
        name = request.match_info["name"]
        return await self._answer({"via": f"incoming/{name}", "payload": orjson.loads(str(posted["payload"]))})
