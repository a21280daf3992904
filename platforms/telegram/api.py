"""The Telegram Bot API, as much of it as the adapter uses (core.telegram.org/bots/api).

Every method is `POST {api_base}/bot<token>/<method>` with a JSON body, answered
`{"ok": true, "result": …}` or `{"ok": false, "error_code": …, "description": …, "parameters":
{"retry_after": s}}`. The token is part of every URL: URLs are never logged or put in errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

log = logging.getLogger("switchboard.telegram")


class TelegramError(Exception):
    """A method failed: `code` is Telegram's error_code (HTTP-like; 0 when unreachable)."""

    def __init__(self, method: str, code: int, description: str, retry_after: float | None = None) -> None:
        self.method, self.code, self.description, self.retry_after = method, code, description, retry_after
        super().__init__(f"telegram {method}: {code} {description}")

    @property
    def not_modified(self) -> bool:
        """An edit to the text the message already has: harmless."""
        return self.code == 400 and "not modified" in self.description


class TelegramAPI:
    def __init__(self, session: Callable[[], aiohttp.ClientSession], base: str, token: str) -> None:
        self.session = session
        self._root = f"{base.rstrip('/')}/bot{token}/"  # holds the token: never logged

    async def call(self, method: str, body: dict[str, Any] | None = None, *, seconds: float = 30.0) -> Any:
        try:
            async with self.session().post(
                self._root + method,
                data=orjson.dumps(body or {}),
                headers={"content-type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=seconds),
            ) as resp:
                status, raw = resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as e:  # str(e) may hold the URL: only the type
            raise TelegramError(method, 0, f"unreachable ({type(e).__name__})") from None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise TelegramError(method, status, "the answer is not JSON") from None
        if not isinstance(data, dict) or data.get("ok") is not True:
            data = data if isinstance(data, dict) else {}
            params = data.get("parameters") if isinstance(data.get("parameters"), dict) else {}
            retry = params.get("retry_after") if isinstance(params, dict) else None
            retry = float(retry) if isinstance(retry, int | float) and retry >= 0 else None
            code = data.get("error_code")
            code = code if isinstance(code, int) else status
            raise TelegramError(method, code, str(data.get("description") or f"HTTP {status}"), retry)
        return data.get("result")
