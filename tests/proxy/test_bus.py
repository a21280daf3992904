"""The bus between instances on a real redis-server: what one publishes, the others hear (not
itself); a single-instance store has no bus; a subscription lost with Redis comes back."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from proxy.bus import Bus
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore


async def _until(check: Any, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_other_instances_hear_a_message_and_the_publisher_does_not(redis_url: str):
    url = f"{redis_url}?prefix=bus{uuid.uuid4().hex[:6]}"
    stores = [RedisStore(url) for _ in range(3)]
    buses = [Bus(s) for s in stores]
    heard: list[list[tuple[str, dict[str, Any]]]] = [[], [], []]
    for i, bus in enumerate(buses):
        await stores[i].open()
        bus.on("circuit", lambda d, i=i: heard[i].append(("circuit", d)))

        async def slow(d: dict[str, Any], i: int = i) -> None:
            heard[i].append(("slack:stop", d))

        bus.on("slack:stop", slow)
        bus.start()
    await _until(lambda: all(b.listening for b in buses))
    try:
        assert await buses[0].publish("circuit", {"provider": "main", "open_for": 30})
        buses[1].publish_soon("slack:stop", {"key": "C1:1.0"})
        await buses[0].publish("unknown-topic", {"x": 1})  # nobody handles it: dropped quietly
        await _until(lambda: len(heard[2]) == 2)
        await asyncio.sleep(0.2)
        assert heard[0] == [("slack:stop", {"key": "C1:1.0"})]
        assert heard[1] == [("circuit", {"provider": "main", "open_for": 30})]
        assert sorted(heard[2], key=lambda h: h[0]) == [
            ("circuit", {"provider": "main", "open_for": 30}),
            ("slack:stop", {"key": "C1:1.0"}),
        ]
    finally:
        for bus, store in zip(buses, stores, strict=True):
            await bus.close()
            await store.close()


async def test_a_failing_handler_and_a_foreign_message_do_not_stop_the_bus(redis_url: str):
    url = f"{redis_url}?prefix=bus{uuid.uuid4().hex[:6]}"
    a, b = RedisStore(url), RedisStore(url)
    await a.open()
    await b.open()
    bus_a, bus_b = Bus(a), Bus(b)
    heard: list[int] = []

    def handler(d: dict[str, Any]) -> None:
        if d["n"] == 1:
            raise ValueError("boom")
        heard.append(d["n"])

    bus_b.on("t", handler)
    bus_b.start()
    await _until(lambda: bus_b.listening)
    try:
        await a.publish("not json at all")
        await a.publish('{"o": "x"}')
        await bus_a.publish("t", {"n": 1})
        await bus_a.publish("t", {"n": 2})
        await _until(lambda: heard == [2])
    finally:
        await bus_b.close()
        await a.close()
        await b.close()


async def test_a_single_instance_store_has_no_bus():
    store = MemoryStore()
    bus = Bus(store)
    bus.on("t", lambda d: None)
    bus.start()
    assert not bus.active
    assert await bus.publish("t", {"n": 1}) is False
    bus.publish_soon("t", {"n": 1})
    await bus.close()
    assert not bus.listening
