"""The slice of the Feishu/Lark open API the adapter needs: tenant token, bot info, reply, edit.

Errors come back as JSON `code != 0` (HTTP may be 200 or 400), so `code` is always checked.
The `tenant_access_token` is cached until 5 minutes before `expire`, and fetched again (once) when
an API answers that the token is invalid.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson
from cachetools import TTLCache

log = logging.getLogger("switchboard.feishu")
TOKEN_INVALID = {99991661, 99991663, 99991668}
MARGIN = 300


class FeishuAPIError(Exception):
    def __init__(self, what: str, code: Any, msg: str) -> None:
        self.code = code
        super().__init__(f"{what}: code {code}: {msg}")


class FeishuAPI:
    def __init__(self, http: aiohttp.ClientSession, base: str, app_id: str, app_secret: str) -> None:
        self.http, self.base = http, base.rstrip("/")
        self.credentials = {"app_id": app_id, "app_secret": app_secret}
        self.tokens: TTLCache[str, str] = TTLCache(maxsize=1, ttl=7200)
        self.lock = asyncio.Lock()
        self.timeout = aiohttp.ClientTimeout(total=15)

    async def _json(self, method: str, path: str, body: Any, token: str | None) -> dict[str, Any]:
        headers = {"content-type": "application/json; charset=utf-8"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        data = orjson.dumps(body) if body is not None else None
        async with self.http.request(method, self.base + path, data=data, headers=headers, timeout=self.timeout) as r:
            raw = await r.read()
        try:
            out = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise FeishuAPIError(path, f"HTTP {r.status}", "non-JSON answer") from None
        return out if isinstance(out, dict) else {}

    async def token(self, fresh: bool = False) -> str:
        async with self.lock:
            if not fresh and "t" in self.tokens:
                return self.tokens["t"]
            out = await self._json("POST", "/open-apis/auth/v3/tenant_access_token/internal", self.credentials, None)
            if out.get("code") != 0:
                raise FeishuAPIError("tenant_access_token", out.get("code"), str(out.get("msg")))
            ttl = max(30, int(out.get("expire") or 7200) - MARGIN)
            self.tokens = TTLCache(maxsize=1, ttl=ttl)
            self.tokens["t"] = str(out["tenant_access_token"])
            return self.tokens["t"]

    async def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        out = await self._json(method, path, body, await self.token())
        if out.get("code") in TOKEN_INVALID:
            out = await self._json(method, path, body, await self.token(fresh=True))
        if out.get("code") != 0:
            raise FeishuAPIError(path, out.get("code"), str(out.get("msg")))
        return out

    async def reply(self, message_id: str, text: str, uuid: str) -> str:
        body = {"msg_type": "text", "content": orjson.dumps({"text": text}).decode(), "uuid": uuid[:50]}
        out = await self.call("POST", f"/open-apis/im/v1/messages/{message_id}/reply", body)
        return str((out.get("data") or {}).get("message_id"))

    async def edit(self, message_id: str, text: str) -> None:
        body = {"msg_type": "text", "content": orjson.dumps({"text": text}).decode()}
        await self.call("PUT", f"/open-apis/im/v1/messages/{message_id}", body)

    async def bot_open_id(self) -> str | None:
        try:
            out = await self.call("GET", "/open-apis/bot/v3/info")
        except (FeishuAPIError, aiohttp.ClientError, TimeoutError) as e:
            log.warning("feishu bot info failed (%s): every group message that reaches us is answered", e)
            return None
        return (out.get("bot") or {}).get("open_id")
