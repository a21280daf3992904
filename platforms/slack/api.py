"""The slice of Slack's Web API the adapter needs: auth.test, chat.postMessage/update/delete.

Quirks: errors come back as HTTP 200 with `{"ok": false, "error": ...}`, so `ok` is always
checked; a 429 carries `Retry-After` (seconds). A patient call waits it out and tries again (up
to `max_wait` per wait); an impatient one (a streaming edit that the next edit supersedes)
raises `SlackRateLimited` at once so the caller can skip ahead. Network failures are never
retried: `chat.postMessage` is not idempotent. Errors never carry the token.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from proxy.errors import DeliveryError

log = logging.getLogger("switchboard.slack")


class SlackAPIError(DeliveryError):
    """Slack refused a call (`error` is Slack's code, e.g. `message_not_found`) or was unreachable."""

    def __init__(self, method: str, error: str) -> None:
        self.method, self.error = method, error
        super().__init__(f"slack {method}: {error}")


class SlackRateLimited(SlackAPIError):
    def __init__(self, method: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(method, f"ratelimited (retry after {retry_after:g}s)")


def retry_after_seconds(value: str | None) -> float:
    try:
        seconds = float(value or 1)
    except ValueError:
        return 1.0
    return max(0.0, seconds) if math.isfinite(seconds) else 1.0


def _wait_retry_after(state: RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome else None
    return error.retry_after if isinstance(error, SlackRateLimited) else 1.0


class SlackAPI:
    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession],
        base: str,
        token: str,
        *,
        max_wait: float = 30.0,
        attempts: int = 4,
        timeout: float = 15.0,
    ) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.headers = {"authorization": f"Bearer {token}", "content-type": "application/json; charset=utf-8"}
        self.max_wait, self.attempts = max_wait, attempts
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def call(self, method: str, body: dict[str, Any], *, patient: bool = True) -> dict[str, Any]:
        if not patient:
            return await self._once(method, body)
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, SlackRateLimited) and e.retry_after <= self.max_wait),
            wait=_wait_retry_after,
            stop=stop_after_attempt(self.attempts),
            before_sleep=lambda s: log.info("slack %s rate-limited; waiting as told", method),
            reraise=True,
        )
        return await retrying(self._once, method, body)

    async def _once(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base}/{method}"
        data, t = orjson.dumps(body), self.timeout
        return await self._send(method, lambda: self.session().post(url, data=data, headers=self.headers, timeout=t))

    async def read(self, method: str, params: dict[str, str]) -> dict[str, Any]:
        """A read method (`conversations.replies`, `users.info`): GET with query arguments, as
        the read methods take them (they do not all accept JSON bodies). Not retried."""
        url, auth, t = f"{self.base}/{method}", {"authorization": self.headers["authorization"]}, self.timeout
        return await self._send(method, lambda: self.session().get(url, params=params, headers=auth, timeout=t))

    async def _send(self, method: str, request: Callable[[], Any]) -> dict[str, Any]:
        try:
            async with request() as resp:
                status, raw = resp.status, await resp.read()
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as e:
            raise SlackAPIError(method, f"unreachable ({type(e).__name__})") from None
        if status == 429:
            raise SlackRateLimited(method, retry_after_seconds(retry_after))
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise SlackAPIError(method, f"HTTP {status}, non-JSON answer") from None
        if not isinstance(data, dict) or data.get("ok") is not True:
            error = data.get("error") if isinstance(data, dict) else None
            raise SlackAPIError(method, str(error or f"HTTP {status}"))
        return data

    async def post(self, channel: str, text: str, thread_ts: str | None) -> str:
        body: dict[str, Any] = {"channel": channel, "text": text, "unfurl_links": False}
        if thread_ts:
            body["thread_ts"] = thread_ts
        ts = (await self.call("chat.postMessage", body)).get("ts")
        if not isinstance(ts, str):
            raise SlackAPIError("chat.postMessage", "answer without ts")
        return ts

    async def update(self, channel: str, ts: str, text: str, *, patient: bool = True) -> None:
        await self.call("chat.update", {"channel": channel, "ts": ts, "text": text}, patient=patient)

    async def delete(self, channel: str, ts: str) -> None:
        await self.call("chat.delete", {"channel": channel, "ts": ts})

    async def identity(self) -> tuple[str | None, str | None]:
        """Our bot's (user id, bot id) from `auth.test`; (None, None) when it fails."""
        try:
            data = await self.call("auth.test", {}, patient=False)
        except SlackAPIError as e:
            log.warning("%s; our own messages are recognised by bot_id and the event envelope only", e)
            return None, None
        user, bot = data.get("user_id"), data.get("bot_id")
        return (user if isinstance(user, str) else None), (bot if isinstance(bot, str) else None)
