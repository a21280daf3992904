"""memory:// — everything in this process; for tests and throwaway runs."""

from __future__ import annotations

import copy
import time

from proxy.contracts import Store
from proxy.store import TRANSCRIPT_CAP, last_turns
from proxy.types import JSON, Message

#: Seconds between sweeps of expired claims and values.
PURGE_EVERY = 60.0


class MemoryStore(Store):
    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._transcripts: dict[str, list[Message]] = {}
        self._states: dict[str, dict[str, JSON]] = {}
        self._values: dict[str, tuple[str, float | None]] = {}
        self._next_purge = 0.0

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> bool:
        return True

    async def history(self, conversation: str, turns: int) -> list[Message]:
        return last_turns(self._transcripts.get(conversation, []), turns)

    async def append(self, conversation: str, messages: list[Message]) -> None:
        kept = self._transcripts.setdefault(conversation, [])
        kept.extend(messages)
        if len(kept) > TRANSCRIPT_CAP:
            del kept[: len(kept) - TRANSCRIPT_CAP]

    async def clear(self, conversation: str) -> None:
        self._transcripts.pop(conversation, None)
        self._states.pop(conversation, None)

    async def get_state(self, conversation: str, provider: str) -> JSON | None:
        value = self._states.get(conversation, {}).get(provider)
        return copy.deepcopy(value)  # callers may mutate what they get, as with the other stores

    async def set_state(self, conversation: str, provider: str, value: JSON | None) -> None:
        states = self._states.setdefault(conversation, {})
        if value is None:
            states.pop(provider, None)
        else:
            states[provider] = copy.deepcopy(value)

    def _live(self, key: str) -> str | None:
        item = self._values.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and time.time() >= expires:
            del self._values[key]
            return None
        return value

    def _store(self, key: str, value: str, ttl: float | None) -> None:
        now = time.time()
        if now >= self._next_purge:  # keys never read again must not pile up
            self._values = {k: v for k, v in self._values.items() if v[1] is None or v[1] > now}
            self._next_purge = now + PURGE_EVERY
        self._values[key] = (value, now + ttl if ttl else None)

    async def claim(self, key: str, ttl: float) -> bool:
        if self._live(key) is not None:
            return False
        self._store(key, "1", ttl)
        return True

    async def put(self, key: str, value: str, ttl: float | None = None) -> None:
        self._store(key, value, ttl)

    async def get(self, key: str) -> str | None:
        return self._live(key)

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)
