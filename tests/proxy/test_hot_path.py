"""The raw-ASGI hot path (POST /v1/chat/completions) behaves like the rest of the HTTP surface:
client disconnects stop the upstream, bodies of any framing are read and bounded, and the
errors are OpenAI's JSON. Real uvicorn, real fake upstream, real clients."""

from __future__ import annotations

import asyncio
import gc

import httpx
import orjson
import pytest

from proxy.app import create_app
from proxy.cli import tune_gc
from proxy.config import parse_config
from proxy.engine import Engine
from proxy.errors import ConfigError, RequestError
from proxy.http_util import ClientGone, read_body
from proxy.types import Message
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import serve_asgi

KEY = "sk-hot"
AUTH = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}


def app_for(upstream: FakeOpenAI, **server):
    return create_app(
        parse_config(
            {
                "server": {"max_body_bytes": 10_000, **server},
                "store": {"url": "memory://"},
                "keys": [{"key": KEY}],
                "providers": {"up": {"kind": "openai", "base_url": upstream.base_url, "api_key": "sk-up"}},
                "channels": [{"name": "chat", "providers": ["up"]}],
            },
            {},
        )
    )


def body(text: str = "hello", **extra) -> bytes:
    return orjson.dumps({"model": "chat", "messages": [{"role": "user", "content": text}], **extra})


async def wait_for(predicate, seconds: float = 10.0) -> bool:
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


async def test_client_leaving_mid_stream_stops_the_upstream():
    words = " ".join(f"w{i}" for i in range(300))  # 300 chunks, 50 ms apart: 15 s if nobody stops it
    async with FakeOpenAI(answer=words, chunk_delay=0.05) as up, serve_asgi(app_for(up)) as url:
        async with httpx.AsyncClient() as h:
            async with h.stream("POST", f"{url}/v1/chat/completions", content=body(stream=True), headers=AUTH) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if "w1" in line:
                        break  # hang up after a couple of words
        assert await wait_for(lambda: up.streams_cut == 1), "the upstream stream was not stopped"
        assert up.streams_done == 0
        # and the server still answers the next caller
        async with httpx.AsyncClient() as h:
            r = await h.post(f"{url}/v1/chat/completions", content=body("again"), headers=AUTH)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == words


async def test_chunked_request_body_is_read_whole():
    async def pieces():
        raw = body("in pieces")
        for i in range(0, len(raw), 7):
            yield raw[i : i + 7]

    async with FakeOpenAI(answer="fine") as up, serve_asgi(app_for(up)) as url, httpx.AsyncClient() as h:
        r = await h.post(f"{url}/v1/chat/completions", content=pieces(), headers=AUTH)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "fine"
        assert up.requests[-1].json["messages"][-1]["content"] == "in pieces"


async def test_chunked_body_over_the_limit_is_413_and_nothing_is_sent_upstream():
    async def pieces():
        for _ in range(20):
            yield b"x" * 1000

    async with FakeOpenAI() as up, serve_asgi(app_for(up)) as url, httpx.AsyncClient() as h:
        r = await h.post(f"{url}/v1/chat/completions", content=pieces(), headers=AUTH)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_too_large"
        assert up.requests == []


def receiver(*messages):
    """An ASGI `receive` that hands out `messages`, then fails the test if called again."""
    queue = list(messages)

    async def receive():
        assert queue, "read past the end"
        return queue.pop(0)

    return receive


async def test_garbage_content_length_is_a_400_before_reading():
    # uvicorn's parser refuses such requests itself; other ASGI servers may pass them on
    with pytest.raises(RequestError) as e:
        await read_body(receiver(), 100, b"12abc")
    assert e.value.status == 400 and "Content-Length" in e.value.message


async def test_declared_oversize_is_a_413_without_reading():
    with pytest.raises(RequestError) as e:
        await read_body(receiver(), 100, b"101")
    assert e.value.status == 413 and "101 bytes" in e.value.message


async def test_body_in_parts_and_a_client_leaving_mid_body():
    parts = receiver(
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": False},
    )
    assert await read_body(parts, 100) == b"abcd"
    left = receiver({"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.disconnect"})
    with pytest.raises(ClientGone):
        await read_body(left, 100)


async def test_get_on_the_completions_path_is_405_in_openai_json():
    async with FakeOpenAI() as up, serve_asgi(app_for(up)) as url, httpx.AsyncClient() as h:
        r = await h.get(f"{url}/v1/chat/completions", headers=AUTH)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["type"] == "invalid_request_error"


async def test_answer_ids_are_unique_and_headers_name_the_provider():
    async with FakeOpenAI() as up, serve_asgi(app_for(up)) as url, httpx.AsyncClient() as h:
        rs = [await h.post(f"{url}/v1/chat/completions", content=body(), headers=AUTH) for _ in range(3)]
        s = await h.post(f"{url}/v1/chat/completions", content=body(stream=True), headers=AUTH)
    ids = {r.json()["id"] for r in rs}
    assert len(ids) == 3 and all(i.startswith("chatcmpl-") for i in ids)
    assert all(r.headers["x-switchboard-provider"] == "up" for r in rs)
    assert rs[0].headers["content-type"] == "application/json"
    assert s.headers["content-type"].startswith("text/event-stream")
    assert s.headers["x-switchboard-provider"] == "up" and s.text.endswith("data: [DONE]\n\n")
    assert s.text.split("\n\n")[0].removeprefix("data: ").startswith('{"id":"chatcmpl-')


def test_serve_tunes_the_collector_only_when_asked():
    before = gc.get_threshold()
    try:
        tune_gc(0)
        assert gc.get_threshold() == before
        tune_gc(12_345)
        assert gc.get_threshold()[0] == 12_345 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_gc_threshold_is_validated():
    with pytest.raises(ConfigError) as e:
        parse_config({"server": {"gc_threshold": -1}, "providers": {}, "channels": []}, {})
    assert "server.gc_threshold" in str(e.value)


async def test_a_started_transcript_write_survives_its_caller_being_cancelled():
    """A client that leaves while its finished answer is being recorded cancels the handler;
    the write must still land (the store is a shared mechanism: Engine.record guards it)."""
    engine = Engine(parse_config({"store": {"url": "memory://"}, "providers": {}, "channels": []}, {}))
    await engine.store.open()
    started, release = asyncio.Event(), asyncio.Event()
    append = engine.store.append

    async def slow_append(conversation, messages):
        started.set()
        await release.wait()
        await append(conversation, messages)

    engine.store.append = slow_append  # type: ignore[method-assign]
    task = asyncio.create_task(engine.record("c1", [Message("user", "hi")], "hello"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    for _ in range(100):
        if await engine.store.history("c1", 5):
            break
        await asyncio.sleep(0.01)
    assert [m.text() for m in await engine.store.history("c1", 5)] == ["hi", "hello"]
