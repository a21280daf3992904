"""The slice of the WeCom server API the self-built app needs: `gettoken` and `message/send`
(developer.work.weixin.qq.com/document/path/90236), and a smart robot's `response_url`.

- Errors come back as `errcode`/`errmsg` in a 200 JSON body; `errcode != 0` raises
  `WeComAPIError` (a `DeliveryError`). The access token and the app secret travel in query
  strings, so no error raised here carries a URL.
- The token (7,200 s) is cached until `TOKEN_MARGIN` before it expires and fetched again, once,
  when a call answers that it is invalid or expired (40001, 40014, 42001). Concurrent callers
  that hit the same stale token share one refresh.
- `message/send` answers errcode 0 with `invaliduser` filled when the member cannot be reached
  (left the company, outside the app's visible range): that is a failure for a one-member send.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from cachetools import TLRUCache

from platforms.wechat_mp.api import json_call
from proxy.errors import DeliveryError

log = logging.getLogger("switchboard.wecom")
TOKEN_ERRORS = frozenset({40001, 40014, 42001})
#: Fetch a new token this many seconds before WeCom says the cached one expires.
TOKEN_MARGIN = 300.0
TIMEOUT = aiohttp.ClientTimeout(total=15)


class WeComAPIError(DeliveryError):
    """WeCom refused a call or could not be reached. Carries errcode/errmsg, never a token."""

    def __init__(self, what: str, errcode: int | None = None) -> None:
        self.errcode = errcode
        super().__init__(f"wecom {what}")


def _lifetime(_key: str, value: tuple[str, float], now: float) -> float:
    return now + value[1]


async def call(
    http: aiohttp.ClientSession, method: str, url: str, what: str, *, params: Any = None, body: Any = None
) -> dict[str, Any]:
    """One API call's JSON answer (errcode not yet checked)."""
    return await json_call(http, method, url, what, WeComAPIError, params=params, body=body, time_limit=TIMEOUT)


def _failed(what: str, out: dict[str, Any]) -> WeComAPIError:
    code = out.get("errcode")
    return WeComAPIError(
        f"{what}: errcode {code} {out.get('errmsg', '')}".strip(), code if isinstance(code, int) else None
    )


class WeComAPI:
    """One self-built app: its CorpID, Secret and AgentId."""

    def __init__(self, http: aiohttp.ClientSession, base: str, corp_id: str, secret: str, agent_id: int) -> None:
        self._http, self._base = http, base.rstrip("/")
        self._corp_id, self._secret, self._agent_id = corp_id, secret, agent_id
        self._tokens: TLRUCache[str, tuple[str, float]] = TLRUCache(maxsize=1, ttu=_lifetime)
        self._lock = asyncio.Lock()

    async def access_token(self, *, stale: str | None = None) -> str:
        """The cached token; a new one when there is none or the cached one is `stale`."""
        async with self._lock:
            cached = self._tokens.get("t")
            if cached is not None and cached[0] != stale:
                return cached[0]
            params = {"corpid": self._corp_id, "corpsecret": self._secret}
            out = await call(self._http, "GET", self._base + "/cgi-bin/gettoken", "gettoken", params=params)
            token = out.get("access_token")
            if out.get("errcode", 0) != 0 or not isinstance(token, str) or not token:
                raise _failed("gettoken", out)
            expires = float(out.get("expires_in") or 7200)
            self._tokens["t"] = (token, max(expires - TOKEN_MARGIN, 30.0))
            return token

    async def send_text(self, user_id: str, content: str) -> None:
        """One text message from the app to one member."""
        body = {
            "touser": user_id,
            "msgtype": "text",
            "agentid": self._agent_id,
            "text": {"content": content},
            "safe": 0,
        }
        token = await self.access_token()
        for attempt in range(2):
            url = self._base + "/cgi-bin/message/send"
            out = await call(self._http, "POST", url, "message/send", params={"access_token": token}, body=body)
            code = out.get("errcode", 0)
            if code in TOKEN_ERRORS and attempt == 0:
                log.info("wecom: access token refused (errcode %s); fetching a new one", code)
                token = await self.access_token(stale=token)
                continue
            if code != 0:
                raise _failed("message/send", out)
            if out.get("invaliduser"):
                raise WeComAPIError("message/send: the member cannot receive the app's messages (invaliduser)")
            return


async def respond(http: aiohttp.ClientSession, response_url: str, content: str) -> None:
    """A smart robot's active reply through a message's `response_url` (usable once, for an hour):
    markdown, at most 20,480 bytes."""
    body = {"msgtype": "markdown", "markdown": {"content": content}}
    out = await call(http, "POST", response_url, "response_url", body=body)
    if out.get("errcode", 0) != 0:
        raise _failed("response_url", out)
