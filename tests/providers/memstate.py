"""A tiny in-memory ProviderState for driving providers directly."""

from __future__ import annotations

from typing import Any


class MemoryState:
    def __init__(self, value: dict[str, Any] | None = None) -> None:
        self.value = value
        self.writes: list[dict[str, Any] | None] = []

    async def get(self) -> dict[str, Any] | None:
        return self.value

    async def set(self, value: dict[str, Any] | None) -> None:
        self.value = value
        self.writes.append(value)
