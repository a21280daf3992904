"""One user message being answered across WeChat's deliveries of it.

WeChat waits 5 s for a passive reply, then drops the connection and delivers the same message
again (3 deliveries in total), to whichever instance the load balancer picks. Every delivery of
a message that reaches one process waits on the same `Pending`: the finished answer goes out on
whichever delivery is waiting when it is ready (made here, or announced over the bus by the
instance that made it), and a delivery that is still waiting when a newer one arrives, here or
elsewhere, is released (WeChat has dropped it already).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Ready:
    """A finished answer: `first` goes in the passive reply, `rest` through the
    customer-service API (when configured; otherwise it is already kept for "1")."""

    first: str
    rest: tuple[str, ...] = ()


class Pending:
    """The deliveries of one message waiting in this process. Deliveries are numbered across
    instances (the adapter counts them in the store), so `arrived` may skip numbers."""

    def __init__(self, open_id: str) -> None:
        self.open_id = open_id
        self.answer: asyncio.Future[Ready] = asyncio.get_running_loop().create_future()
        #: The highest delivery number seen so far, here or (over the bus) on another instance.
        self.deliveries = 0
        #: Deliveries in this process waiting on it now (the answer can go out on one of them).
        self.waiting = 0
        self._newer = asyncio.Event()

    def arrived(self, number: int) -> None:
        """Delivery `number` arrived (here or elsewhere): release the older ones still waiting."""
        if number > self.deliveries:
            self.deliveries = number
            self._newer.set()
            self._newer = asyncio.Event()

    def set(self, ready: Ready) -> None:
        if not self.answer.done():
            self.answer.set_result(ready)

    def ready(self) -> Ready | None:
        return self.answer.result() if self.answer.done() else None

    async def wait(self, seconds: float) -> Ready | None:
        """The answer if it is ready within `seconds`, else None."""
        await asyncio.wait({self.answer}, timeout=seconds)
        return self.ready()

    async def hold(self, number: int, seconds: float) -> Ready | None:
        """Keep delivery `number` open until the answer is ready, a newer delivery arrives,
        or `seconds` pass. None unless the answer is ready."""
        if self.deliveries > number or self.answer.done():
            return self.ready()
        newer: asyncio.Future[Any] = asyncio.ensure_future(self._newer.wait())
        waits: list[asyncio.Future[Any]] = [self.answer, newer]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            newer.cancel()
        return self.ready()
