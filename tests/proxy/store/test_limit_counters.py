"""`Store.hit` (fixed windows) and `Store.acquire`/`release` (leased slots) on every store:
memory, SQLite in a real file, Redis on a real server."""

from __future__ import annotations

import asyncio

from proxy.limiter import UNLIMITED


async def test_hit_counts_within_the_limit_and_refuses_beyond(store):
    hits = [await store.hit("k", 1, 3600, 3) for _ in range(4)]
    assert [h.allowed for h in hits] == [True, True, True, False]
    assert [h.remaining for h in hits] == [2, 1, 0, 0]
    assert all(0 < h.retry_after <= 3600 for h in hits)
    assert (await store.hit("other", 1, 3600, 3)).allowed  # each key counts on its own


async def test_amount_zero_asks_and_a_charge_always_counts(store):
    assert (await store.hit("tok", 0, 3600, 10)).remaining == 10  # asking counts nothing
    assert (await store.hit("tok", 25, 3600, UNLIMITED)).allowed  # charged past the budget
    refused = await store.hit("tok", 0, 3600, 10)
    assert not refused.allowed and refused.remaining == 0
    assert not (await store.hit("tok", 5, 3600, 29)).allowed  # 25 + 5 > 29: nothing counted
    assert (await store.hit("tok", 4, 3600, 29)).remaining == 0


async def test_concurrent_hits_never_exceed_the_limit(store):
    hits = await asyncio.gather(*(store.hit("busy", 1, 3600, 5) for _ in range(40)))
    assert sum(h.allowed for h in hits) == 5


async def test_the_count_starts_again_when_the_window_ends(store):
    while (refused := await store.hit("w", 1, 0.3, 1)).allowed:  # until one finds its window full
        pass
    await asyncio.sleep(refused.retry_after + 0.01)
    assert (await store.hit("w", 1, 0.3, 1)).allowed


async def test_slots_are_limited_released_and_leased(store):
    assert await store.acquire("s", "a", 2, 60)
    assert await store.acquire("s", "b", 2, 60)
    assert not await store.acquire("s", "c", 2, 60)
    await store.release("s", "a")
    assert await store.acquire("s", "c", 2, 60)
    await store.release("s", "nobody")  # not held: nothing happens
    # a holder that never releases (a crashed instance): its slot runs out with its lease
    assert await store.acquire("t", "dead", 1, 0.2)
    assert not await store.acquire("t", "live", 1, 60)
    await asyncio.sleep(0.25)
    assert await store.acquire("t", "live", 1, 60)
