"""Discord's REST API (v10), as much as the adapter uses: `Authorization: Bot <token>`, JSON
bodies. Interaction routes (`/webhooks/<app>/<token>`, `/interactions/<id>/<token>/callback`)
take no bot token, and are sent none; their paths hold a secret: paths are never logged or put
in errors.

Rate limits, as Discord asks clients to keep them (docs: topics/rate-limits): a response whose
`X-RateLimit-Remaining` is 0 empties its route's bucket for `X-RateLimit-Reset-After` seconds,
and the next call on that route waits for it instead of earning a 429; a 429 answers
`{"retry_after": seconds, "global": bool}` and is raised as `DiscordError.retry_after` (a
global one holds every route). A route is the verb and the path with message ids taken out:
buckets are per channel / webhook (the "major parameters"), not per message.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDictProxy

EVERY_ROUTE = "*"
JSON = {"content-type": "application/json"}
MESSAGE_ID = re.compile(r"/messages/\d+")


class DiscordError(Exception):
    def __init__(self, what: str, status: int, message: str, retry_after: float | None = None) -> None:
        self.status, self.retry_after = status, retry_after
        super().__init__(f"discord {what}: {status} {message}")


class DiscordAPI:
    def __init__(
        self, session: Callable[[], aiohttp.ClientSession], base: str, token: str, *, max_wait: float = 30.0
    ) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.max_wait = max_wait
        self._auth = {"authorization": f"Bot {token}", **JSON}
        self._empty: dict[str, float] = {}  # route -> monotonic time its bucket refills

    async def call(self, verb: str, path: str, body: Any = None, *, what: str = "") -> Any:
        """`verb` `path` (under the API root); the parsed answer (None for 204). `what` names the
        call in errors instead of its path (which may hold an interaction token). Waits for an
        empty bucket to refill (at most `max_wait` seconds, else raises as a 429 would)."""
        what = what or f"{verb} {path}"
        route = f"{verb} {MESSAGE_ID.sub('/messages/:id', path)}"
        await self._wait(route, what)
        try:
            async with self.session().request(
                verb,
                self.base + path,
                data=None if body is None else orjson.dumps(body),
                headers=JSON if path.startswith(("/webhooks/", "/interactions/")) else self._auth,
                timeout=aiohttp.ClientTimeout(total=30),
            ) as resp:
                status, raw, headers = resp.status, await resp.read(), resp.headers
        except (aiohttp.ClientError, TimeoutError) as e:
            raise DiscordError(what, 0, f"unreachable ({type(e).__name__})") from None
        try:
            data = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            data = None
        if status == 429:
            retry = _retry_after(data, headers)
            scope = EVERY_ROUTE if isinstance(data, dict) and data.get("global") else route
            self._empty[scope] = time.monotonic() + retry
            raise DiscordError(what, 429, "rate limited", retry)
        self._note(route, headers)
        if status >= 400:
            message = data.get("message") if isinstance(data, dict) else None
            raise DiscordError(what, status, str(message or "error"))
        return data

    async def _wait(self, route: str, what: str) -> None:
        now = time.monotonic()
        wait = max(self._empty.get(route, 0.0), self._empty.get(EVERY_ROUTE, 0.0)) - now
        if wait > self.max_wait:
            raise DiscordError(what, 429, "rate limit bucket empty", wait)
        if wait > 0:
            await asyncio.sleep(wait)

    def _note(self, route: str, headers: CIMultiDictProxy[str]) -> None:
        """Remember a bucket the response says is empty; forget refilled ones (interaction
        routes come and go with their tokens)."""
        now = time.monotonic()
        for key in [k for k, t in self._empty.items() if t <= now]:
            del self._empty[key]
        if headers.get("x-ratelimit-remaining") == "0":
            try:
                reset = float(headers.get("x-ratelimit-reset-after", ""))
            except ValueError:
                return
            self._empty[route] = now + min(reset, 3600.0)


def _retry_after(data: Any, headers: CIMultiDictProxy[str]) -> float:
    """Seconds a 429 asks for: the JSON body's `retry_after` (a float), else `Retry-After`."""
    retry = data.get("retry_after") if isinstance(data, dict) else None
    if isinstance(retry, int | float) and not isinstance(retry, bool):
        return max(0.0, float(retry))
    try:
        return max(0.0, float(headers.get("retry-after", "1")))
    except ValueError:
        return 1.0
