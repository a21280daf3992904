"""The customer-service (客服) message API and its access_token, for answers sent after the
5-second passive-reply window.

Tokens come from `cgi-bin/stable_token` (not `cgi-bin/token`, whose every call invalidates the
token other instances hold). A token is cached until shortly before it expires and refetched
once when the API says it is invalid or expired (40001 / 42001 / 40014). WeChat reports errors
as `errcode`/`errmsg` in a 200 JSON body. The token travels in the query string, so errors
raised here never include a URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from cachetools import TLRUCache

TOKEN_ERRORS = {40001, 40014, 42001}
#: Refetch this many seconds before WeChat says the token expires.
TOKEN_MARGIN = 120.0
TIMEOUT = aiohttp.ClientTimeout(total=10)


class WeChatAPIError(Exception):
    """A WeChat API call failed. The message carries errcode/errmsg, never the token."""

    def __init__(self, what: str, errcode: int | None = None) -> None:
        self.errcode = errcode
        super().__init__(what)


async def json_call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    what: str,
    error: Callable[[str], Exception],
    *,
    params: Any = None,
    body: Any = None,
    time_limit: aiohttp.ClientTimeout = TIMEOUT,
) -> dict[str, Any]:
    """One call to a WeChat-family API (the Official Account's, WeCom's): its JSON object, errcode
    not yet checked. Failures raise `error(what + why)`: `what` names the call, never its URL
    (the access token is in the query)."""
    data = orjson.dumps(body) if body is not None else None
    headers = {"Content-Type": "application/json; charset=utf-8"} if data is not None else None
    try:
        async with http.request(method, url, params=params, data=data, headers=headers, timeout=time_limit) as resp:
            raw, status = await resp.read(), resp.status
    except (aiohttp.ClientError, TimeoutError) as e:
        raise error(f"{what}: {type(e).__name__}") from None
    if status != 200:
        raise error(f"{what}: HTTP {status}")
    try:
        out = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise error(f"{what}: the answer is not JSON") from None
    if not isinstance(out, dict):
        raise error(f"{what}: the answer is not a JSON object")
    return out


def _token_expiry(_key: str, value: tuple[str, float], now: float) -> float:
    return now + max(value[1] - TOKEN_MARGIN, 1.0)


class CustomerService:
    def __init__(self, http: aiohttp.ClientSession, api_base: str, app_id: str, secret: str) -> None:
        self._http = http
        self._base = api_base.rstrip("/")
        self._app_id = app_id
        self._secret = secret
        self._tokens: TLRUCache[str, tuple[str, float]] = TLRUCache(maxsize=1, ttu=_token_expiry)
        self._lock = asyncio.Lock()

    async def _post(self, path: str, body: dict[str, Any], params: dict[str, str] | None = None) -> dict[str, Any]:
        return await json_call(self._http, "POST", self._base + path, path, WeChatAPIError, params=params, body=body)

    async def access_token(self, *, stale: str | None = None) -> str:
        """A valid token; `stale` names one the API just rejected, so it is not served again."""
        async with self._lock:
            cached = self._tokens.get("token")
            if cached is not None and cached[0] != stale:
                return cached[0]
            data = await self._post(
                "/cgi-bin/stable_token",
                {"grant_type": "client_credential", "appid": self._app_id, "secret": self._secret},
            )
            token = data.get("access_token")
            if not isinstance(token, str) or not token:
                code = data.get("errcode")
                raise WeChatAPIError(f"stable_token: errcode {code} {data.get('errmsg', '')}".strip(), code)
            self._tokens["token"] = (token, float(data.get("expires_in") or 7200))
            return token

    async def send_text(self, open_id: str, content: str) -> None:
        """One text message to a user (inside the 48-hour window that their message opened)."""
        body = {"touser": open_id, "msgtype": "text", "text": {"content": content}}
        token = await self.access_token()
        for attempt in range(2):
            data = await self._post("/cgi-bin/message/custom/send", body, {"access_token": token})
            code = data.get("errcode", 0)
            if code == 0:
                return
            if code in TOKEN_ERRORS and attempt == 0:
                token = await self.access_token(stale=token)
                continue
            raise WeChatAPIError(f"message/custom/send: errcode {code} {data.get('errmsg', '')}".strip(), code)
