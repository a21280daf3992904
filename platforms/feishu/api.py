"""The slice of the Feishu/Lark open API the adapter needs: tenant token, bot info, reply, card patch.

Quirks:
- errors come back as JSON `code != 0` while HTTP may be 200 or 400, so `code` is always checked;
- the `tenant_access_token` lives at most 2 h (`expire` seconds); it is cached until 5 minutes
  before that, and fetched again — once — when an API call answers that it is invalid
  (99991661 missing/malformed, 99991663 invalid, 99991668 expired). Concurrent callers that hit
  the same stale token share one refresh;
- `uuid` on a reply makes Feishu send at most one message per uuid (about an hour), so a retried
  send of ours is not duplicated.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson
from cachetools import TLRUCache

from proxy.errors import DeliveryError

log = logging.getLogger("switchboard.feishu")
TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
TOKEN_INVALID = frozenset({99991661, 99991663, 99991668})
#: Refresh this many seconds before Feishu's `expire`.
TOKEN_MARGIN = 300


class FeishuAPIError(DeliveryError):
    """Feishu refused a call (or could not be reached). Never carries the token."""

    def __init__(self, what: str, code: Any, msg: str) -> None:
        self.code = code
        super().__init__(f"feishu {what}: code {code}: {msg}")


def _token_lifetime(_key: str, value: tuple[str, float], now: float) -> float:
    return now + value[1]


class FeishuAPI:
    def __init__(self, http: aiohttp.ClientSession, base: str, app_id: str, app_secret: str) -> None:
        self.http, self.base = http, base.rstrip("/")
        self.credentials = {"app_id": app_id, "app_secret": app_secret}
        self.tokens: TLRUCache[str, tuple[str, float]] = TLRUCache(maxsize=1, ttu=_token_lifetime)
        self.token_lock = asyncio.Lock()
        self.timeout = aiohttp.ClientTimeout(total=15)

    async def _request(
        self, method: str, path: str, body: Any, token: str | None, time_limit: aiohttp.ClientTimeout | None = None
    ) -> dict[str, Any]:
        headers = {"content-type": "application/json; charset=utf-8"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        data = orjson.dumps(body) if body is not None else None
        try:
            async with self.http.request(
                method, self.base + path, data=data, headers=headers, timeout=time_limit or self.timeout
            ) as resp:
                raw, status = await resp.read(), resp.status
        except (aiohttp.ClientError, TimeoutError) as e:
            raise FeishuAPIError(path, "network", type(e).__name__) from None
        try:
            out = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise FeishuAPIError(path, f"HTTP {status}", "non-JSON answer") from None
        if not isinstance(out, dict):
            raise FeishuAPIError(path, f"HTTP {status}", "answer is not a JSON object")
        return out

    async def token(self, stale: str | None = None) -> str:
        """The cached tenant token; a new one when there is none or the cached one is `stale`."""
        async with self.token_lock:
            cached = self.tokens.get("t")
            if cached is not None and cached[0] != stale:
                return cached[0]
            out = await self._request("POST", TOKEN_PATH, self.credentials, None)
            token = out.get("tenant_access_token")
            if out.get("code") != 0 or not isinstance(token, str):
                raise FeishuAPIError("tenant_access_token", out.get("code"), str(out.get("msg")))
            lifetime = max(30.0, float(out.get("expire") or 7200) - TOKEN_MARGIN)
            self.tokens["t"] = (token, lifetime)
            return token

    async def call(
        self, method: str, path: str, body: Any = None, time_limit: aiohttp.ClientTimeout | None = None
    ) -> dict[str, Any]:
        token = await self.token()
        out = await self._request(method, path, body, token, time_limit)
        if out.get("code") in TOKEN_INVALID:
            log.info("feishu: tenant token refused (code %s); fetching a new one", out.get("code"))
            out = await self._request(method, path, body, await self.token(stale=token), time_limit)
        if out.get("code") != 0:
            raise FeishuAPIError(path, out.get("code"), str(out.get("msg")))
        return out

    async def reply(self, message_id: str, msg_type: str, content: str, uuid: str) -> str:
        """Reply to `message_id`; `content` is the JSON-encoded string Feishu expects. Returns
        the new message's id."""
        body = {"msg_type": msg_type, "content": content, "uuid": uuid[:50]}
        out = await self.call("POST", f"/open-apis/im/v1/messages/{message_id}/reply", body)
        return str((out.get("data") or {}).get("message_id") or "")

    async def patch_card(self, message_id: str, content: str) -> None:
        """Replace the content of an interactive card we sent (5 QPS per message, no edit cap)."""
        await self.call("PATCH", f"/open-apis/im/v1/messages/{message_id}", {"content": content})

    async def bot_open_id(self) -> str | None:
        try:
            out = await self.call("GET", "/open-apis/bot/v3/info", time_limit=aiohttp.ClientTimeout(total=5))
        except FeishuAPIError as e:
            log.warning("feishu bot info unavailable (%s): every group message that reaches us is answered", e)
            return None
        open_id = (out.get("bot") or {}).get("open_id")
        return str(open_id) if open_id else None


def text_content(text: str) -> str:
    return orjson.dumps({"text": text}).decode()


def card_content(text: str) -> str:
    """An interactive card with one markdown element. `update_multi` must be set both in the
    card we send and in every patch, or Feishu refuses the update."""
    card = {
        "config": {"wide_screen_mode": True, "update_multi": True},
        "elements": [{"tag": "markdown", "content": text}],
    }
    return orjson.dumps(card).decode()
