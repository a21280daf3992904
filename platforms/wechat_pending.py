"""One user message being answered across WeChat's deliveries of it.

WeChat waits 5 s for a passive reply, then drops the connection and delivers the same message
again (3 deliveries in total). Every delivery of a message waits on the same `Pending`: the
finished answer goes out on whichever delivery is waiting when it is ready, and a delivery
that is still waiting when a newer one arrives is released (WeChat has dropped it already).
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
    def __init__(self, open_id: str) -> None:
        self.open_id = open_id
        self.answer: asyncio.Future[Ready] = asyncio.get_running_loop().create_future()
        #: Deliveries of this message seen so far (counted, not timed).
        self.deliveries = 1
        #: No delivery will take the answer any more: `deliver` sends it another way.
        self.handed_off = False
        #: `deliver` has finished (only tracked once handed off).
        self.finished = False
        #: The rest of a long answer was already given to the customer-service API.
        self.rest_taken = False
        self._newer = asyncio.Event()

    def redelivered(self) -> int:
        """Count a new delivery and release the ones still waiting. Returns its number."""
        self.deliveries += 1
        self._newer.set()
        self._newer = asyncio.Event()
        return self.deliveries

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
