"""Discord's REST API (v10), as much as the adapter uses: `Authorization: Bot <token>`, JSON
bodies; a 429 answers `{"retry_after": seconds}`. Interaction tokens are in webhook paths:
paths are never logged or put in errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import orjson


class DiscordError(Exception):
    def __init__(self, what: str, status: int, message: str, retry_after: float | None = None) -> None:
        self.status, self.retry_after = status, retry_after
        super().__init__(f"discord {what}: {status} {message}")


class DiscordAPI:
    def __init__(self, session: Callable[[], aiohttp.ClientSession], base: str, token: str) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self._auth = {"authorization": f"Bot {token}", "content-type": "application/json"}

    async def call(self, verb: str, path: str, body: Any = None, *, what: str = "") -> Any:
        """`verb` `path` (under the API root); the parsed answer (None for 204). `what` names the
        call in errors instead of its path (which may hold an interaction token)."""
        what = what or f"{verb} {path}"
        try:
            async with self.session().request(
                verb,
                self.base + path,
                data=None if body is None else orjson.dumps(body),
                headers=self._auth,
                timeout=aiohttp.ClientTimeout(total=30),
            ) as resp:
                status, raw = resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise DiscordError(what, 0, f"unreachable ({type(e).__name__})") from None
        try:
            data = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            data = None
        if status == 429:
            retry = data.get("retry_after") if isinstance(data, dict) else None
            raise DiscordError(what, 429, "rate limited", float(retry) if isinstance(retry, int | float) else 1.0)
        if status >= 400:
            message = data.get("message") if isinstance(data, dict) else None
            raise DiscordError(what, status, str(message or "error"))
        return data
