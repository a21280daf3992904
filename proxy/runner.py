"""Background work with bounded concurrency, kept references, logged failures and a drain."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("switchboard.runner")


class Runner:
    def __init__(self, limit: int) -> None:
        self.slots = asyncio.Semaphore(limit)
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str, *, bounded: bool = False) -> asyncio.Task[Any]:
        """Run `coro` in the background. `bounded` work waits for one of the `limit` slots."""
        task = asyncio.create_task(self._guard(coro, name, bounded), name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _guard(self, coro: Coroutine[Any, Any, Any], name: str, bounded: bool) -> Any:
        try:
            if bounded:
                async with self.slots:
                    return await coro
            return await coro
        except asyncio.CancelledError:
            log.warning("background task %s cancelled", name)
            raise
        except Exception:
            log.exception("background task %s failed", name)
            return None

    async def drain(self, seconds: float) -> int:
        """Wait up to `seconds` for running work; cancel what is left. Returns how many were cut."""
        if not self.tasks:
            return 0
        _, pending = await asyncio.wait(set(self.tasks), timeout=seconds)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        return len(pending)
