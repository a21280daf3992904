"""The bus: instances sharing one store tell each other what they learned or were asked.

Several Switchboard instances behind a load balancer share a Redis store. What lives in one
process — a provider's circuit, a key's health, the generation a Slack "stop" shortcut means,
the WeChat delivery waiting for an answer — is announced on the bus (Redis pub/sub) so the
other instances act on it. Single-instance stores have no bus: `publish` does nothing.

A message is a topic and a JSON object. Handlers are registered per topic (one each; a rebuilt
platform replaces its predecessor's) and run for messages of *other* instances only: whoever
publishes has already acted on its own news. The bus is best effort: a message published while
Redis is away is lost (the store is down then, which `/readyz` says), a handler's failure is
logged and the bus goes on. When the subscription breaks, it is opened again with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from proxy.contracts import Store

log = logging.getLogger("switchboard.bus")

Handler = Callable[[dict[str, Any]], Awaitable[None] | None]

#: Seconds between attempts to subscribe again after the store went away (doubling up to the max).
RETRY_FIRST, RETRY_MAX = 0.2, 5.0


class Bus:
    def __init__(self, store: Store) -> None:
        self.store = store
        #: This process on the bus: its own messages come back and are skipped.
        self.origin = secrets.token_hex(6)
        self.handlers: dict[str, Handler] = {}
        #: True while subscribed (a shared store only): what `/readyz` and the tests look at.
        self.listening = False
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[bool]] = set()

    @property
    def active(self) -> bool:
        """Are there other instances to tell? (A shared store.)"""
        return self.store.shared

    def on(self, topic: str, handler: Handler) -> None:
        """Run `handler(data)` for each message on `topic` from another instance."""
        self.handlers[topic] = handler

    async def publish(self, topic: str, data: dict[str, Any]) -> bool:
        """Tell the other instances. False when it could not be sent (the store is down): never
        raises, since the publisher has already acted on the news itself."""
        if not self.active:
            return False
        try:
            await self.store.publish(orjson.dumps({"o": self.origin, "t": topic, "d": data}).decode())
        except Exception as e:
            log.warning("bus: %s not sent to the other instances: %s", topic, _reason(e))
            return False
        return True

    def publish_soon(self, topic: str, data: dict[str, Any]) -> None:
        """`publish` without waiting for it (from synchronous code such as a circuit opening)."""
        if not self.active:
            return
        task = asyncio.get_running_loop().create_task(self.publish(topic, data))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def start(self) -> None:
        if self.active and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="bus")

    async def close(self) -> None:
        if self._sending:
            await asyncio.wait(self._sending, timeout=2)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        self.listening = False

    async def _run(self) -> None:
        wait, failing = RETRY_FIRST, False
        while True:
            stream = self.store.listen()
            if stream is None:
                return
            try:
                async for raw in stream:
                    if not self.listening:
                        self.listening = True
                        if failing:
                            log.warning("bus: listening again")
                        failing, wait = False, RETRY_FIRST
                    if raw:
                        await self._dispatch(raw)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not failing:
                    log.warning("bus: lost the subscription (%s); retrying", _reason(e))
                failing = True
            finally:
                self.listening = False
                with contextlib.suppress(Exception):
                    await stream.aclose()  # type: ignore[attr-defined]
            await asyncio.sleep(wait)
            wait = min(RETRY_MAX, wait * 2)

    async def _dispatch(self, raw: str) -> None:
        try:
            msg = orjson.loads(raw)
            origin, topic, data = msg["o"], msg["t"], msg["d"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("bus: dropped a message that is not ours: %.80r", raw)
            return
        if origin == self.origin:
            return
        handler = self.handlers.get(topic)
        if handler is None or not isinstance(data, dict):
            return
        try:
            result = handler(data)
            if result is not None:
                await result
        except Exception:
            log.exception("bus: the handler of %s failed", topic)


def _reason(e: BaseException) -> str:
    return str(e) or type(e).__name__
