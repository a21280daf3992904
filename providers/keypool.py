"""Key pools for OpenAI-compatible providers.

Requests go to the healthy key with the fewest requests in flight; a conversation sticks to its
key while that key is healthy. A key answered with 401/403 or quota-exhausted is disabled; a 429
puts it on cooldown. When every key is out, `acquire` raises the last failure's error class, so
the core counts the provider as failed and moves down the chain. Keys are only ever shown masked.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from cachetools import TTLCache

from proxy.errors import AuthFailed, ProviderError, QuotaExceeded, RateLimited

Mapper = Callable[[BaseException, str], ProviderError]
Errors = tuple[type[BaseException], ...]

DEFAULT_COOLDOWN = 30.0


def mask(key: str) -> str:
    if not key:
        return "(none)"
    head = key[:3] if len(key) > 10 else ""
    return f"{head}…{key[-4:]}" if len(key) > 4 else "…"


@dataclass(slots=True)
class Key:
    value: str
    index: int = 0
    in_flight: int = 0
    disabled: str | None = None
    cooldown_until: float = 0.0

    def usable(self, now: float) -> bool:
        return self.disabled is None and now >= self.cooldown_until


def key_id(key: Key) -> str:
    """A key's name in news for other instances: a short hash, never the key (the same key in
    another position, after a reload reordered the pool, is still the same key)."""
    return hashlib.sha256(key.value.encode()).hexdigest()[:12]


class KeyPool:
    def __init__(self, keys: list[str], provider: str) -> None:
        self.keys = [Key(k, i) for i, k in enumerate(keys)]
        self.provider = provider
        self.sticky: TTLCache[str, Key] = TTLCache(maxsize=50_000, ttl=6 * 3600)
        self.last_error: ProviderError | None = None
        self._turn = 0
        #: Told when a key is disabled or starts cooling down: `{"key": key_id, "disabled": reason}`
        #: or `{"key": key_id, "cooldown_until": epoch seconds}` (shared with other instances).
        self.on_change: Callable[[dict[str, Any]], None] | None = None
        self._by_id = {key_id(k): k for k in self.keys}

    def apply(self, news: dict[str, Any]) -> bool:
        """Another instance's news about one of these keys (see `on_change`); False when the key
        is not in this pool (another config, or reordered and changed)."""
        key = self._by_id.get(str(news.get("key")))
        if key is None:
            return False
        if isinstance(news.get("disabled"), str):
            key.disabled = f"{news['disabled']} (found by another instance)"[:200]
        elif isinstance(news.get("cooldown_until"), int | float):
            until = time.monotonic() + (float(news["cooldown_until"]) - time.time())
            key.cooldown_until = max(key.cooldown_until, until)
        return True

    def acquire(self, conversation: str = "") -> Key:
        now = time.monotonic()
        if len(self.keys) == 1:
            only = self.keys[0]
            if not only.usable(now):
                raise self._all_out()
            only.in_flight += 1
            return only
        key: Key | None = self.sticky.get(conversation) if conversation else None
        if key is None or not key.usable(now):
            healthy = [k for k in self.keys if k.usable(now)]
            if not healthy:
                raise self._all_out()
            # fewest in flight; ties rotate so sequential traffic spreads over the pool too
            n = len(self.keys)
            turn = self._turn = (self._turn + 1) % n
            key = min(healthy, key=lambda k: (k.in_flight, (k.index - turn) % n))
            if conversation:
                self.sticky[conversation] = key
        key.in_flight += 1
        return key

    def release(self, key: Key, error: BaseException | None = None) -> None:
        key.in_flight -= 1
        if isinstance(error, (AuthFailed, QuotaExceeded)):
            key.disabled = f"{type(error).__name__}: {error.message}"[:200]
            self.last_error = error
            if self.on_change is not None:
                self.on_change({"key": key_id(key), "disabled": key.disabled})
        elif isinstance(error, RateLimited):
            wait = DEFAULT_COOLDOWN if error.retry_after is None else error.retry_after
            key.cooldown_until = time.monotonic() + wait
            self.last_error = error
            if self.on_change is not None:
                self.on_change({"key": key_id(key), "cooldown_until": round(time.time() + wait, 3)})

    def lease(
        self,
        conversation: str,
        translate: Errors = (),
        mapper: Mapper | None = None,
    ) -> Lease:
        """`async with pool.lease(conv, TRANSPORT_ERRORS, transport_error) as key:` — the key is
        released with the call's outcome; transport errors are mapped to the error tree."""
        return Lease(self, self.acquire(conversation), translate, mapper)

    def _all_out(self) -> ProviderError:
        last = self.last_error
        cls = type(last) if last is not None else RateLimited
        retry = None
        if cls is RateLimited:
            waits = [k.cooldown_until - time.monotonic() for k in self.keys if k.disabled is None]
            retry = max(0.0, min(waits)) if waits else None
        return cls(
            f"no usable API key ({len(self.keys)} configured: all disabled or cooling down)",
            provider=self.provider,
            status=last.status if last else None,
            retry_after=retry,
        )

    def status(self) -> list[dict[str, object]]:
        """Per key: masked key, `state` (ok / cooldown until HH:MM:SS / disabled: reason),
        `in_flight`, and `cooldown_until` (Unix time) while cooling down."""
        now, wall = time.monotonic(), time.time()
        out: list[dict[str, object]] = []
        for k in self.keys:
            row: dict[str, object] = {"key": mask(k.value), "state": "ok", "in_flight": k.in_flight}
            if k.disabled:
                row["state"] = f"disabled: {k.disabled}"
            elif now < k.cooldown_until:
                until = wall + (k.cooldown_until - now)
                row["state"] = f"cooldown until {time.strftime('%H:%M:%S', time.localtime(until))}"
                row["cooldown_until"] = round(until, 1)
            out.append(row)
        return out

    def summary(self) -> str:
        """`3 keys (2 ok, 1 cooling down, 0 disabled)` — for describe()."""
        now = time.monotonic()
        disabled = sum(1 for k in self.keys if k.disabled)
        cooling = sum(1 for k in self.keys if not k.disabled and now < k.cooldown_until)
        n = len(self.keys)
        return (
            f"{n} key{'s' if n != 1 else ''} ({n - disabled - cooling} ok, {cooling} cooling down, {disabled} disabled)"
        )


class Lease:
    """One request's use of a key (a plain class: this runs on every request)."""

    __slots__ = ("key", "mapper", "pool", "translate")

    def __init__(self, pool: KeyPool, key: Key, translate: Errors, mapper: Mapper | None) -> None:
        self.pool, self.key, self.translate, self.mapper = pool, key, translate, mapper

    async def __aenter__(self) -> Key:
        return self.key

    async def __aexit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if err is not None and self.mapper is not None and isinstance(err, self.translate):
            mapped = self.mapper(err, self.pool.provider)
            self.pool.release(self.key, mapped)
            raise mapped from None
        self.pool.release(self.key, err if isinstance(err, ProviderError) else None)
