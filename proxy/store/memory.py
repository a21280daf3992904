"""memory:// — everything in this process; for tests and throwaway runs."""

from __future__ import annotations

import time

from proxy.contracts import Store
from proxy.store import TRANSCRIPT_CAP, last_turns
from proxy.types import JSON, Message


class MemoryStore(Store):
    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._transcripts: dict[str, list[Message]] = {}
        self._states: dict[str, dict[str, JSON]] = {}
        self._values: dict[str, tuple[str, float | None]] = {}

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
        return self._states.get(conversation, {}).get(provider)

    async def set_state(self, conversation: str, provider: str, value: JSON | None) -> None:
        states = self._states.setdefault(conversation, {})
        if value is None:
            states.pop(provider, None)
        else:
            states[provider] = dict(value)

    def _live(self, key: str) -> str | None:
        item = self._values.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and time.time() >= expires:
            del self._values[key]
            return None
        return value

    async def claim(self, key: str, ttl: float) -> bool:
        if self._live(key) is not None:
            return False
        self._values[key] = ("1", time.time() + ttl)
        return True

    async def put(self, key: str, value: str, ttl: float | None = None) -> None:
        self._values[key] = (value, time.time() + ttl if ttl else None)

    async def get(self, key: str) -> str | None:
        return self._live(key)

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)
