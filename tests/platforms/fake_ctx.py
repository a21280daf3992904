"""A tiny in-process PlatformContext for adapter unit tests: records claims, submits and spawns."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from proxy.bus import Bus
from proxy.store.memory import MemoryStore
from proxy.types import Inbound


class FakeCtx:
    def __init__(self) -> None:
        self.claimed: set[str] = set()
        self.notes: dict[str, dict[str, Any]] = {}
        self.submitted: list[Inbound] = []
        self.spawned: list[str] = []
        self.bus = Bus(MemoryStore())  # one instance: publishing does nothing

    async def claim(self, key: str) -> bool:
        first = key not in self.claimed
        self.claimed.add(key)
        return first

    async def note(self, msg: Inbound, **fields: Any) -> None:
        self.notes.setdefault(msg.event_id, {}).update(fields)

    async def settle(self, key: str) -> None:
        self.claimed.add(key)

    def submit(self, platform: Any, msg: Inbound) -> None:
        self.submitted.append(msg)

    async def accept(self, platform: Any, msg: Inbound) -> Inbound | None:
        """As the core's: claim every key of `msg`, then submit it; None for a duplicate."""
        for key in (msg.event_id, *msg.extra_keys):
            if not await self.claim(key):
                return None
        self.submit(platform, msg)
        return msg

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        self.spawned.append(name)
        coro.close()


class WholeAnswer:
    """A finished answer, in one piece (implements `proxy.contracts.Answer`)."""

    def __init__(self, text: str) -> None:
        self.text, self.images = text, ()
        self.failed = self.stopped = self.replaced = False

    async def __aiter__(self) -> Any:
        yield self.text


class Scripted:
    """An answer arriving in `pieces` (implements `proxy.contracts.Answer`)."""

    def __init__(self, pieces: list[str], images: tuple[str, ...] = ()) -> None:
        self.pieces, self.text, self.images = pieces, "", images
        self.failed = self.stopped = self.replaced = False

    async def __aiter__(self) -> Any:
        for piece in self.pieces:
            self.text += piece
            yield piece
