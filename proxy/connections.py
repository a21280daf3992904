"""Connection modes: platform adapters that hold an outbound connection (Slack Socket Mode, ...)
instead of, or besides, a webhook.

An adapter whose `connects()` is true has its `connection(up)` run by a supervisor task: it
holds one connection, calls `up()` once the platform has accepted it, and returns (or raises)
when the connection ends. The supervisor starts it again after a pause that grows with each
failure in a row (0.5 s doubling to 30 s, with jitter, so many instances do not reconnect in
step) and that resets once a connection was up. At shutdown, and when a reload retires the
adapter, the task is cancelled. The state of every connection (`connecting`, `connected`,
`down`, reconnects, the last error) is in `/readyz` and `/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from proxy.contracts import Platform

log = logging.getLogger("switchboard.connections")

BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0


@dataclass
class Link:
    """What `/readyz` and `/metrics` say about one platform's connection."""

    state: str = "connecting"
    reconnects: int = 0
    since: float = field(default_factory=time.time)
    error: str | None = None


def backoff(failures: int) -> float:
    """Seconds to wait after `failures` failed connections in a row: doubling, capped, jittered
    to between half and all of it."""
    base = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, failures - 1))
    return base * (0.5 + random.random() / 2)


async def received(ws: aiohttp.ClientWebSocketResponse, kind: aiohttp.WSMsgType) -> AsyncIterator[Any]:
    """The data of each `kind` message (TEXT or BINARY) until the connection closes or fails;
    control frames and the other kind are skipped."""
    async for message in ws:  # aiohttp's iterator itself ends at CLOSE / CLOSING / CLOSED
        if message.type == kind:
            yield message.data
        elif message.type == aiohttp.WSMsgType.ERROR:
            return


async def json_objects(ws: aiohttp.ClientWebSocketResponse, who: str) -> AsyncIterator[dict[str, Any]]:
    """Each TEXT message that is a JSON object; anything else is logged (for `who`) and skipped."""
    async for text in received(ws, aiohttp.WSMsgType.TEXT):
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            log.warning("%s: a frame that is not JSON was ignored", who)
            continue
        if isinstance(data, dict):
            yield data


class Connections:
    def __init__(self) -> None:
        self.links: dict[str, Link] = {}
        self._tasks: dict[Platform, asyncio.Task[None]] = {}

    def start(self, platform: Platform) -> None:
        if not platform.connects() or platform in self._tasks:
            return
        self.links[platform.name] = Link()
        self._tasks[platform] = asyncio.get_running_loop().create_task(
            self._supervise(platform), name=f"connection:{platform.name}"
        )

    async def stop(self, platform: Platform) -> None:
        task = self._tasks.pop(platform, None)
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        link = self.links.get(platform.name)
        if link is not None and not any(p.name == platform.name for p in self._tasks):
            del self.links[platform.name]

    async def close(self) -> None:
        for platform in list(self._tasks):
            await self.stop(platform)

    def status(self) -> dict[str, dict[str, object]]:
        return {
            name: {"state": link.state, "reconnects": link.reconnects, "error": link.error}
            for name, link in sorted(self.links.items())
        }

    async def _supervise(self, platform: Platform) -> None:
        link = self.links[platform.name]
        failures = 0

        def up() -> None:
            nonlocal failures
            failures = 0
            link.state, link.since, link.error = "connected", time.time(), None
            log.info("platform %s: connected", platform.name)

        while True:
            link.state = "connecting"
            try:
                await platform.connection(up)
                link.error = "the platform closed the connection"
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any failure is the connection's: it is made again
                link.error = f"{type(e).__name__}: {e}"[:300]
            failures += 1
            link.state, link.since = "down", time.time()
            link.reconnects += 1
            wait = backoff(failures)
            log.warning("platform %s: connection lost (%s); reconnecting in %.1f s", platform.name, link.error, wait)
            await asyncio.sleep(wait)
