"""memory:// — everything in this process; for tests and throwaway runs."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

from proxy.contracts import Claim, ClaimState, Hit, Store, UsageRow
from proxy.store import TRANSCRIPT_CAP, last_turns, window_end
from proxy.types import JSON, Message

#: Seconds between sweeps of expired claims and values.
PURGE_EVERY = 60.0


@dataclass(slots=True)
class Lease:
    owner: str
    until: float  # the lease runs out (unsettled claims)
    expires: float  # the claim is forgotten
    payload: str | None
    done: bool = False


class MemoryStore(Store):
    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._leases: dict[str, Lease] = {}
        self._transcripts: dict[str, list[Message]] = {}
        self._states: dict[str, dict[str, JSON]] = {}
        self._values: dict[str, tuple[str, float | None]] = {}
        self._counters: dict[str, tuple[float, int]] = {}  # key -> (its window's end, count)
        self._slots: dict[str, dict[str, float]] = {}  # key -> {token: lease end}
        self._usage: dict[tuple[int, tuple[str, ...]], UsageRow] = {}
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

    def _lease(self, key: str, now: float) -> Lease | None:
        held = self._leases.get(key)
        if held is not None and held.expires <= now:
            del self._leases[key]
            return None
        return held

    async def claim_lease(self, key: str, *, owner: str, lease: float, ttl: float, payload: str | None = None) -> Claim:
        now = time.time()
        held = self._lease(key, now)
        if held is None:
            if now >= self._next_purge:
                self._leases = {k: v for k, v in self._leases.items() if v.expires > now}
                self._next_purge = now + PURGE_EVERY
            self._leases[key] = Lease(owner, now + lease, now + ttl, payload)
            return Claim(ClaimState.NEW)
        if held.done:
            return Claim(ClaimState.DONE)
        if held.until > now:
            return Claim(ClaimState.IN_FLIGHT)
        held.owner, held.until = owner, now + lease
        return Claim(ClaimState.TAKEN_OVER, held.payload)

    async def renew(self, key: str, *, owner: str, lease: float, payload: str | None = None) -> bool:
        now = time.time()
        held = self._lease(key, now)
        if held is None or held.done or held.owner != owner:
            return False
        held.until = now + lease
        if payload is not None:
            held.payload = payload
        return True

    async def settle(self, key: str, ttl: float, *more: str) -> None:
        now = time.time()
        for k in (key, *more):
            self._leases[k] = Lease("", now, now + ttl, None, done=True)

    async def expired_claims(self, prefix: str, limit: int) -> list[tuple[str, str | None]]:
        now = time.time()
        found = [
            (k, v.payload)
            for k, v in self._leases.items()
            if k.startswith(prefix) and not v.done and v.until <= now < v.expires
        ]
        return found[:limit]

    async def release_others(self, owner: str) -> int:
        now, ended = time.time(), 0
        for held in self._leases.values():
            if not held.done and held.owner != owner and held.until > now:
                held.until, ended = now, ended + 1
        return ended

    async def hit(self, key: str, amount: int, window: float, limit: int) -> Hit:
        now = time.time()
        end = window_end(now, window)
        held = self._counters.get(key)
        count = held[1] if held is not None and held[0] == end else 0
        if count + max(amount, 1) > limit:
            return Hit(False, max(0, limit - count), end - now)
        if amount:
            if len(self._counters) > 10_000 and held is None:  # windows that ended: forget them
                self._counters = {k: v for k, v in self._counters.items() if v[0] > now}
            self._counters[key] = (end, count + amount)
        return Hit(True, limit - count - amount, end - now)

    async def acquire(self, key: str, token: str, limit: int, lease: float) -> bool:
        now = time.time()
        slots = self._slots.setdefault(key, {})
        for t in [t for t, until in slots.items() if until <= now]:
            del slots[t]
        if len(slots) >= limit:
            return False
        slots[token] = now + lease
        return True

    async def release(self, key: str, token: str) -> None:
        slots = self._slots.get(key)
        if slots is not None:
            slots.pop(token, None)
            if not slots:
                del self._slots[key]

    async def put(self, key: str, value: str, ttl: float | None = None) -> None:
        self._store(key, value, ttl)

    async def get(self, key: str) -> str | None:
        return self._live(key)

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)

    async def add_usage(self, rows: list[UsageRow]) -> None:
        for r in rows:
            kept = self._usage.get((r.hour, r.dims()))
            if kept is None:
                self._usage[r.hour, r.dims()] = copy.copy(r)
            else:
                kept.prompt += r.prompt
                kept.completion += r.completion
                kept.requests += r.requests
                kept.estimated += r.estimated

    async def usage(self, since: float) -> list[UsageRow]:
        first = since // 3600 * 3600
        return [copy.copy(r) for (hour, _), r in self._usage.items() if hour >= first]
