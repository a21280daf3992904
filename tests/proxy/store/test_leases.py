"""The leased-claim contract (`Store.claim_lease` and friends), against every store: memory,
SQLite (a real file) and Redis (a real server)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from proxy.contracts import ClaimState
from proxy.engine import open_store

NEW, TAKEN_OVER, IN_FLIGHT, DONE = ClaimState.NEW, ClaimState.TAKEN_OVER, ClaimState.IN_FLIGHT, ClaimState.DONE


async def test_new_then_in_flight_then_done(store):
    first = await store.claim_lease("seen:p:e1", owner="a", lease=30, ttl=60, payload="m1")
    assert first.state is NEW and first and first.payload is None
    again = await store.claim_lease("seen:p:e1", owner="b", lease=30, ttl=60)
    assert again.state is IN_FLIGHT and not again
    mine = await store.claim_lease("seen:p:e1", owner="a", lease=30, ttl=60)
    assert mine.state is IN_FLIGHT  # a live lease is left to its owner, whoever asks
    await store.settle("seen:p:e1", 60)
    done = await store.claim_lease("seen:p:e1", owner="b", lease=30, ttl=60)
    assert done.state is DONE and not done
    assert await store.renew("seen:p:e1", owner="a", lease=30) is False
    assert await store.expired_claims("seen:", 10) == []


async def test_an_expired_lease_is_taken_over_once_with_its_payload(store):
    await store.claim_lease("seen:p:e2", owner="dead", lease=0.2, ttl=60, payload='{"m": 1}')
    assert await store.renew("seen:p:e2", owner="dead", lease=0.2, payload='{"m": 2}') is True
    await asyncio.sleep(0.3)
    assert await store.expired_claims("seen:", 10) == [("seen:p:e2", '{"m": 2}')]
    assert await store.expired_claims("other:", 10) == []
    results = await asyncio.gather(
        *(store.claim_lease("seen:p:e2", owner=f"o{i}", lease=30, ttl=60) for i in range(20))
    )
    taken = [r for r in results if r.state is TAKEN_OVER]
    assert len(taken) == 1 and taken[0].payload == '{"m": 2}'
    assert [r.state for r in results].count(IN_FLIGHT) == 19
    assert await store.expired_claims("seen:", 10) == []
    assert await store.renew("seen:p:e2", owner="dead", lease=30) is False  # it lost the claim


async def test_new_is_atomic_under_concurrency(store):
    results = await asyncio.gather(
        *(store.claim_lease("seen:p:e3", owner=f"o{i}", lease=30, ttl=60) for i in range(50))
    )
    assert [r.state for r in results].count(NEW) == 1


async def test_renew_keeps_the_lease_and_the_payload_unless_given(store):
    await store.claim_lease("seen:p:e4", owner="a", lease=0.3, ttl=60, payload="one")
    for _ in range(3):
        await asyncio.sleep(0.15)
        assert await store.renew("seen:p:e4", owner="a", lease=0.3)
    assert await store.expired_claims("seen:", 10) == []
    assert (await store.claim_lease("seen:p:e4", owner="b", lease=1, ttl=60)).state is IN_FLIGHT
    await asyncio.sleep(0.4)
    got = await store.claim_lease("seen:p:e4", owner="b", lease=1, ttl=60)
    assert got.state is TAKEN_OVER and got.payload == "one"


async def test_settle_several_keys_at_once(store):
    for k in ("seen:p:s1", "seen:p:s2"):
        await store.claim_lease(k, owner="a", lease=30, ttl=60)
    await store.settle("seen:p:s1", 60, "seen:p:s2", "seen:p:s3")
    states = [
        (await store.claim_lease(k, owner="b", lease=30, ttl=60)).state for k in ("seen:p:s1", "seen:p:s2", "seen:p:s3")
    ]
    assert states == [DONE, DONE, DONE]


async def test_claims_are_forgotten_after_ttl(store):
    await store.claim_lease("seen:p:e5", owner="a", lease=0.1, ttl=0.3)
    await store.claim_lease("seen:p:e6", owner="a", lease=30, ttl=60)
    await store.settle("seen:p:e6", 0.3)
    await asyncio.sleep(0.45)
    assert await store.expired_claims("seen:", 10) == []
    assert (await store.claim_lease("seen:p:e5", owner="b", lease=30, ttl=60)).state is NEW
    assert (await store.claim_lease("seen:p:e6", owner="b", lease=30, ttl=60)).state is NEW


async def test_expired_claims_honours_the_limit(store):
    for i in range(5):
        await store.claim_lease(f"seen:p:l{i}", owner="a", lease=0.1, ttl=60, payload=str(i))
    await asyncio.sleep(0.2)
    assert len(await store.expired_claims("seen:p:", 3)) == 3
    assert len(await store.expired_claims("seen:p:", 10)) == 5


async def test_release_others_ends_an_earlier_boots_leases_in_single_instance_stores(store):
    await store.claim_lease("seen:p:r1", owner="old-boot", lease=30, ttl=60, payload="x")
    await store.claim_lease("seen:p:r2", owner="me", lease=30, ttl=60)
    ended = await store.release_others("me")
    if store.shared:  # Redis: the other owner may be a live instance
        assert ended == 0
        assert (await store.claim_lease("seen:p:r1", owner="me", lease=30, ttl=60)).state is IN_FLIGHT
    else:
        assert ended == 1
        assert await store.expired_claims("seen:", 10) == [("seen:p:r1", "x")]
        got = await store.claim_lease("seen:p:r1", owner="me", lease=30, ttl=60)
        assert got.state is TAKEN_OVER and got.payload == "x"
    assert (await store.claim_lease("seen:p:r2", owner="x", lease=30, ttl=60)).state is IN_FLIGHT


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_leases_survive_reopen(kind, tmp_path, request):
    url = f"sqlite:///{tmp_path}/l.db" if kind == "sqlite" else request.getfixturevalue("redis_url") + "?prefix=lr"
    s = open_store(url)
    await s.open()
    await s.claim_lease("seen:p:k1", owner="a", lease=0.2, ttl=60, payload="keep")
    await s.claim_lease("seen:p:k2", owner="a", lease=30, ttl=60)
    await s.settle("seen:p:k2", 60)
    await s.close()  # as if killed: nothing is settled on the way out
    await asyncio.sleep(0.3)
    s2 = open_store(url)
    await s2.open()
    try:
        got = await s2.claim_lease("seen:p:k1", owner="b", lease=30, ttl=60)
        assert got.state is TAKEN_OVER and got.payload == "keep"
        assert (await s2.claim_lease("seen:p:k2", owner="b", lease=30, ttl=60)).state is DONE
    finally:
        await s2.close()


async def test_a_schema_1_sqlite_file_is_migrated(tmp_path: Path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema', '1');"
        "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL, expires REAL);"
        "INSERT INTO kv VALUES ('seen:slack:Ev1', '1', 1e11), ('other', 'v', NULL);"
    )
    db.commit()
    db.close()
    s = open_store(f"sqlite:///{path}")
    await s.open()
    try:
        assert (await s.claim_lease("seen:slack:Ev1", owner="a", lease=30, ttl=60)).state is DONE
        assert (await s.claim_lease("seen:slack:Ev2", owner="a", lease=30, ttl=60)).state is NEW
        assert await s.get("other") == "v"
    finally:
        await s.close()
    assert sqlite3.connect(path).execute("SELECT v FROM meta WHERE k = 'schema'").fetchone() == ("2",)


async def test_an_old_redis_marker_counts_as_answered(redis_url):
    s = open_store(redis_url + "?prefix=legacy")
    await s.open()
    try:
        assert await s.claim("seen:slack:Ev9", 60)  # what an older Switchboard wrote
        assert (await s.claim_lease("seen:slack:Ev9", owner="a", lease=30, ttl=60)).state is DONE
    finally:
        await s.close()
