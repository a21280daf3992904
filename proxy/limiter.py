"""Enforcing `limits:` (proxy/limits.py) against the store, so a limit holds across instances.

Before a generation, `Limiter.admit(rules)` checks, in this order: the token budgets (is any
left in this window?), requests per window (counted, one store `hit` each), concurrent
generations (a slot taken). The first limit that is reached raises `OverLimit` and nothing is
generated; an rpm already counted for an earlier rule of the same request stays counted (as a
refused request does at most upstream APIs). A `Grant` comes back; `Grant.finish(usage, text)`
gives the slots back and charges the tokens the answer used to every token budget it passed:
`usage.total_tokens` as the upstream reported it, or, when it reported none, an estimate of a
token per 4 characters of prompt and answer.

Where the counting happens: with a shared store (Redis, several instances) every check is one
store round trip (a Lua script) and concurrency slots are leased in the store
(`limits.slot_lease`), so a crashed instance's slots run out. With a store that serves one
process (memory, SQLite) the process is the only one counting, so requests per window and
concurrent generations are counted in process memory (no I/O on the hot path; a restart starts
those windows afresh), and token budgets are kept in the store, so a day's budget survives a
restart, with this process's running total in memory: read from the store once per window, and
charges written to it in one batch per `FLUSH_EVERY` seconds (and at shutdown), off the request
path. A crash loses at most that second of charges.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable, Sequence

from proxy.contracts import Store
from proxy.errors import OverLimit
from proxy.limits import Target
from proxy.store import window_end
from proxy.types import Message, Usage

log = logging.getLogger("switchboard.limits")

#: `hit` limit when charging tokens: the charge always counts.
UNLIMITED = 10**15
#: Seconds between the batched writes of token charges to a local store.
FLUSH_EVERY = 1.0
#: Told of every refusal: limit kind (rpm, tokens_per_day, concurrent), scope, rule name.
Observer = Callable[[str, str, str], None]


def _ignore(kind: str, scope: str, name: str) -> None:
    return None


def estimate_tokens(messages: Iterable[Message], answer: str) -> int:
    """A token per 4 characters of prompt and answer: what is charged when the upstream reports
    no usage."""
    chars = sum(len(m.text()) for m in messages) + len(answer)
    return max(1, math.ceil(chars / 4))


class Grant:
    """An admitted request: its slots, and the token budgets to charge when it ends."""

    __slots__ = ("_done", "limiter", "prompt", "slots", "targets")

    def __init__(self, limiter: Limiter | None, targets: Sequence[Target], slots: list[tuple[str, str]]) -> None:
        self.limiter, self.targets, self.slots = limiter, targets, slots
        self.prompt: Sequence[Message] = ()
        self._done = False

    async def finish(self, usage: Usage | None, text: str) -> None:
        """Release the slots and charge the tokens (once; never raises)."""
        if self._done or self.limiter is None:
            return
        self._done = True
        await self.limiter.finish(self, usage, text)

    async def release(self) -> None:
        """Release the slots without charging (nothing was generated)."""
        if self._done or self.limiter is None:
            return
        self._done = True
        await self.limiter.free(self.slots)


NO_GRANT = Grant(None, (), [])


class Limiter:
    def __init__(self, store: Store, observe: Observer = _ignore) -> None:
        self.store = store
        self.observe = observe
        self.shared = store.shared
        self.local: dict[str, int] = {}  # local store: slots held, by key
        self._counts: dict[str, list[float]] = {}  # local store: rpm key -> [window end, count]
        self._spent: dict[str, tuple[float, int]] = {}  # local store: budget key -> (window end, spent)
        self._unsaved: dict[tuple[str, float], int] = {}  # local store: (budget key, window) -> tokens
        self._flusher: asyncio.Task[None] | None = None
        self._prefix = secrets.token_hex(4)  # slot tokens: this process's prefix and a counter
        self._ids = itertools.count()

    async def admit(self, targets: Sequence[Target], lease: float) -> Grant:
        """Check every target's limits; raise `OverLimit` for the first one reached."""
        for t in targets:
            r = t.rule
            if r.tokens is not None:
                left = await self._budget_left(t.tok_key, r.token_window, r.tokens)
                if left is not None:
                    raise self._refused(t, "tokens_per_day", r.tokens, left, r.token_window)
        for t in targets:
            r = t.rule
            if r.rpm is not None:
                left = await self._count(t.rpm_key, r.request_window, r.rpm)
                if left is not None:
                    raise self._refused(t, "rpm", r.rpm, left, r.request_window)
        slots: list[tuple[str, str]] = []
        for t in targets:
            r = t.rule
            if r.concurrent is not None:
                token = f"{self._prefix}-{next(self._ids)}" if self.shared else ""
                if not await self._acquire(t.slot_key, token, r.concurrent, lease):
                    await self.free(slots)
                    raise self._refused(t, "concurrent", r.concurrent, 1.0, r.request_window)
                slots.append((t.slot_key, token))
        return Grant(self, targets, slots)

    async def _count(self, key: str, window: float, limit: int) -> float | None:
        """Count one request; None when it fits, else the seconds until the window ends."""
        if self.shared:
            hit = await self.store.hit(key, 1, window, limit)
            return None if hit.allowed else hit.retry_after
        now = time.time()
        end = window_end(now, window)
        counted = self._counts.get(key)
        if counted is None or counted[0] != end:
            if counted is None and len(self._counts) > 10_000:  # forget windows that ended
                self._counts = {k: v for k, v in self._counts.items() if v[0] > now}
            counted = self._counts[key] = [end, 0]
        if counted[1] >= limit:
            return end - now
        counted[1] += 1
        return None

    async def _budget_left(self, key: str, window: float, limit: int) -> float | None:
        """None while the budget has tokens left, else the seconds until its window ends."""
        if self.shared:
            hit = await self.store.hit(key, 0, window, limit)
            return None if hit.allowed else hit.retry_after
        now = time.time()
        end = window_end(now, window)
        cached = self._spent.get(key)
        if cached is None or cached[0] != end:  # once per window: what earlier runs spent
            hit = await self.store.hit(key, 0, window, limit)
            cached = self._spent[key] = (end, limit - hit.remaining)
        return None if cached[1] < limit else end - now

    async def _acquire(self, key: str, token: str, limit: int, lease: float) -> bool:
        if self.shared:
            return await self.store.acquire(key, token, limit, lease)
        held = self.local.get(key, 0)
        if held >= limit:
            return False
        self.local[key] = held + 1
        return True

    async def free(self, slots: Sequence[tuple[str, str]]) -> None:
        for key, token in slots:
            if not self.shared:
                held = self.local.get(key, 1) - 1
                if held > 0:
                    self.local[key] = held
                else:
                    self.local.pop(key, None)
                continue
            try:
                await asyncio.shield(self.store.release(key, token))
            except Exception as e:  # the slot's lease runs out by itself
                log.warning("releasing a concurrency slot failed: %s", e)

    async def finish(self, grant: Grant, usage: Usage | None, text: str) -> None:
        await self.free(grant.slots)
        budgets = [t for t in grant.targets if t.rule.tokens is not None]
        if not budgets:
            return
        spent = usage.total_tokens if usage and usage.total_tokens else estimate_tokens(grant.prompt, text)
        for t in budgets:
            key, window = t.tok_key, t.rule.token_window
            if not self.shared:
                end = (time.time() // window + 1) * window
                cached = self._spent.get(key)
                if cached is not None and cached[0] == end:
                    self._spent[key] = (end, cached[1] + spent)
                self._unsaved[key, window] = self._unsaved.get((key, window), 0) + spent
                if self._flusher is None:
                    self._flusher = asyncio.create_task(self._flush_soon())
                continue
            try:
                await asyncio.shield(self.store.hit(key, spent, window, UNLIMITED))
            except Exception as e:
                log.warning("charging %d tokens to %s %s failed: %s", spent, t.rule.scope, t.rule.name, e)

    async def _flush_soon(self) -> None:
        try:
            await asyncio.sleep(FLUSH_EVERY)
        finally:
            self._flusher = None
        await self.flush()

    async def flush(self) -> None:
        """Write the token charges not yet in the (local) store; at shutdown, before it closes."""
        unsaved, self._unsaved = self._unsaved, {}
        for (key, window), spent in unsaved.items():
            try:
                await self.store.hit(key, spent, window, UNLIMITED)
            except Exception as e:
                log.warning("saving %d tokens charged to %s failed: %s", spent, key, e)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        await self.flush()

    def _refused(self, t: Target, kind: str, limit: int, retry_after: float, window: float) -> OverLimit:
        self.observe(kind, t.rule.scope, t.rule.name)
        return OverLimit(kind, t.rule, t.who, limit, max(retry_after, 0.0), window)
