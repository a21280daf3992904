"""One behavioural suite for every store: memory, SQLite (a real file), Redis (a real server)."""

from __future__ import annotations

import asyncio

import pytest

from proxy.engine import open_store
from proxy.types import Message


def exchange(i: int) -> list[Message]:
    return [Message("user", f"q{i}"), Message("assistant", f"a{i}")]


async def test_round_trip_exact(store):
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]
    msgs = [
        Message("user", parts),
        Message("assistant", None, {"tool_calls": [{"id": "c1", "type": "function"}]}),
        Message("tool", "42", {"tool_call_id": "c1"}),
        Message("assistant", "done ✓"),
    ]
    await store.append("c", msgs)
    assert await store.history("c", 5) == msgs


async def test_history_slices_exchanges(store):
    for i in range(5):
        await store.append("c", exchange(i))
    got = await store.history("c", 2)
    assert [m.content for m in got] == ["q3", "a3", "q4", "a4"]
    assert await store.history("c", 0) == []
    assert len(await store.history("c", 50)) == 10
    assert await store.history("nobody", 3) == []


async def test_clear_removes_transcript_and_state_of_that_conversation_only(store):
    await store.append("a", exchange(1))
    await store.append("b", exchange(2))
    await store.set_state("a", "kb", {"conversation_id": "x"})
    await store.set_state("b", "kb", {"conversation_id": "y"})
    await store.clear("a")
    assert await store.history("a", 5) == [] and await store.get_state("a", "kb") is None
    assert await store.history("b", 5) == exchange(2)
    assert await store.get_state("b", "kb") == {"conversation_id": "y"}


async def test_state_set_replace_and_drop(store):
    await store.set_state("c", "kb", {"conversation_id": "1"})
    await store.set_state("c", "kb", {"conversation_id": "2"})
    await store.set_state("c", "other", {"n": 1})
    assert await store.get_state("c", "kb") == {"conversation_id": "2"}
    await store.set_state("c", "kb", None)
    assert await store.get_state("c", "kb") is None and await store.get_state("c", "other") == {"n": 1}


async def test_claim_once_even_when_concurrent(store):
    results = await asyncio.gather(*(store.claim("evt-1", 60) for _ in range(50)))
    assert results.count(True) == 1
    assert await store.claim("evt-2", 60) is True


async def test_ttls_expire(store):
    assert await store.claim("short", 0.2)
    await store.put("v", "hello", 0.2)
    assert await store.get("v") == "hello"
    await asyncio.sleep(0.35)
    assert await store.get("v") is None
    assert await store.claim("short", 60) is True


async def test_put_get_delete(store):
    await store.put("k", "v1")
    await store.put("k", "v2")
    assert await store.get("k") == "v2"
    await store.delete("k")
    assert await store.get("k") is None


async def test_ping(store):
    assert await store.ping() is True


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_survives_reopen(kind, tmp_path, request):
    url = f"sqlite:///{tmp_path}/p.db" if kind == "sqlite" else request.getfixturevalue("redis_url") + "?prefix=reopen"
    s = open_store(url)
    await s.open()
    await s.append("c", exchange(1))
    await s.set_state("c", "kb", {"conversation_id": "keep"})
    assert await s.claim("evt", 3600)
    await s.close()
    s2 = open_store(url)
    await s2.open()
    assert await s2.history("c", 3) == exchange(1)
    assert await s2.get_state("c", "kb") == {"conversation_id": "keep"}
    assert await s2.claim("evt", 3600) is False
    await s2.close()


async def test_history_keeps_long_tool_exchanges_whole(store):
    await store.append("c", exchange(0))
    calls = [Message("assistant", None, {"tool_calls": [{"id": f"c{i}"}]}) for i in range(30)]
    long_turn = [
        Message("user", "q1"),
        *calls,
        Message("tool", "r", {"tool_call_id": "c29"}),
        Message("assistant", "a1"),
    ]
    await store.append("c", long_turn)
    await store.append("c", exchange(2))
    assert await store.history("c", 2) == long_turn + exchange(2)
    assert await store.history("c", 3) == exchange(0) + long_turn + exchange(2)


async def test_transcript_keeps_the_newest_2000_messages(store):
    await store.append("c", [m for i in range(1001) for m in exchange(i)])  # 2,002 messages
    await store.append("c", [])
    kept = await store.history("c", 5000)
    assert len(kept) == 2000
    assert kept[0] == Message("user", "q1") and kept[-1] == Message("assistant", "a1000")


async def test_state_is_a_copy(store):
    value = {"conversation_id": "x", "nested": {"n": 1}}
    await store.set_state("c", "kb", value)
    value["nested"]["n"] = 2
    got = await store.get_state("c", "kb")
    assert got == {"conversation_id": "x", "nested": {"n": 1}}
    got["nested"]["n"] = 3
    assert await store.get_state("c", "kb") == {"conversation_id": "x", "nested": {"n": 1}}


async def test_claim_and_put_without_ttl_outlive_short_ones(store):
    await store.put("forever", "v")
    assert await store.claim("long", 60)
    await store.put("brief", "b", 0.1)
    await asyncio.sleep(0.15)
    assert await store.get("forever") == "v" and await store.claim("long", 60) is False
    assert await store.get("brief") is None


@pytest.mark.parametrize(
    ("url", "path"),
    [("sqlite:///data/switchboard.db", "data/switchboard.db"), ("sqlite:////var/lib/s.db", "/var/lib/s.db")],
)
def test_sqlite_url_paths(url, path):
    from proxy.store.sqlite import sqlite_path

    assert sqlite_path(url) == path


async def test_sqlite_relative_path_creates_its_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = open_store("sqlite:///data/switchboard.db")
    assert not (tmp_path / "data").exists()  # no I/O before open()
    await s.open()
    await s.append("c", exchange(1))
    await s.close()
    assert (tmp_path / "data" / "switchboard.db").is_file()


async def test_redis_prefixes_keep_instances_apart(redis_url):
    a, b = open_store(redis_url + "?prefix=one"), open_store(redis_url + "?prefix=two")
    await a.open()
    await b.open()
    try:
        await a.append("c", exchange(1))
        assert await a.claim("evt-p", 60) and await b.claim("evt-p", 60)
        assert await b.history("c", 3) == []
    finally:
        await a.close()
        await b.close()
