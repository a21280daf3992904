"""The slice of Slack's Web API the adapter needs: auth.test, chat.postMessage/update/delete.

Slack reports errors as HTTP 200 with `{"ok": false, "error": ...}`, so `ok` is always checked.
A 429 carries `Retry-After` (seconds); we wait it out (bounded) and try again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson

log = logging.getLogger("switchboard.slack")

MAX_RETRY_WAIT = 30.0


class SlackAPIError(Exception):
    def __init__(self, method: str, error: str) -> None:
        self.method, self.error = method, error
        super().__init__(f"{method}: {error}")


class SlackAPI:
    def __init__(self, http: aiohttp.ClientSession, base: str, token: str) -> None:
        self.http = http
        self.base = base.rstrip("/")
        self.headers = {"authorization": f"Bearer {token}", "content-type": "application/json; charset=utf-8"}
        self.timeout = aiohttp.ClientTimeout(total=15)

    async def call(self, method: str, body: dict[str, Any], attempts: int = 3) -> dict[str, Any]:
        for attempt in range(attempts):
            async with self.http.post(
                f"{self.base}/{method}", data=orjson.dumps(body), headers=self.headers, timeout=self.timeout
            ) as resp:
                if resp.status == 429 and attempt < attempts - 1:
                    wait = min(MAX_RETRY_WAIT, float(resp.headers.get("Retry-After", "1") or 1))
                    log.info("slack %s rate-limited; retrying in %.1fs", method, wait)
                    await asyncio.sleep(wait)
                    continue
                raw = await resp.read()
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise SlackAPIError(method, f"HTTP {resp.status}, non-JSON answer") from None
            if not data.get("ok"):
                raise SlackAPIError(method, str(data.get("error") or f"HTTP {resp.status}"))
            return data
        raise SlackAPIError(method, "ratelimited")

    async def post(self, channel: str, text: str, thread_ts: str | None) -> str:
        body: dict[str, Any] = {"channel": channel, "text": text, "unfurl_links": False}
        if thread_ts:
            body["thread_ts"] = thread_ts
        return str((await self.call("chat.postMessage", body))["ts"])

    async def update(self, channel: str, ts: str, text: str) -> None:
        await self.call("chat.update", {"channel": channel, "ts": ts, "text": text})

    async def delete(self, channel: str, ts: str) -> None:
        await self.call("chat.delete", {"channel": channel, "ts": ts})

    async def bot_user_id(self) -> str | None:
        try:
            return str((await self.call("auth.test", {}, attempts=1)).get("user_id") or "") or None
        except (TimeoutError, SlackAPIError, aiohttp.ClientError) as e:
            log.warning("slack auth.test failed (%s); own messages are recognised by bot_id only", e)
            return None
