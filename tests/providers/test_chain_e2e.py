"""Failover end to end: the real app, fake Dify and OpenAI upstreams, the official openai SDK."""

from __future__ import annotations

import openai
import pytest

from proxy.app import create_app
from proxy.config import parse_config
from tests.fakes.dify import FakeDify
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import free_port, serve_asgi

KEY = "sk-e2e"


@pytest.fixture
async def fakes():
    async with FakeDify() as dify, FakeOpenAI() as up, FakeOpenAI(answer="backup answer") as backup:
        yield dify, up, backup


def app_for(dify, up, backup, **failover):
    return create_app(
        parse_config(
            {
                "store": {"url": "memory://"},
                "keys": [{"key": KEY}],
                "failover": {
                    "attempts": 2,
                    "backoff_base": 0.01,
                    "backoff_max": 0.02,
                    "circuit_failures": 50,
                    **failover,
                },
                "providers": {
                    "kb": {"kind": "dify", "base_url": dify.base_url, "api_key": "app-1"},
                    "gpt": {
                        "kind": "openai",
                        "base_url": up.base_url,
                        "api_key": "sk-up",
                        "model": "m",
                        "read_timeout": 0.5,
                    },
                    "spare": {"kind": "openai", "base_url": backup.base_url, "api_key": "sk-spare"},
                    "dead": {"kind": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "api_key": "sk-x"},
                },
                "channels": [
                    {"name": "support", "providers": ["kb", "gpt"], "prompt": "You help customers."},
                    {"name": "chat", "providers": ["gpt", "spare"]},
                    {"name": "far", "providers": ["dead", "spare"]},
                ],
            },
            {},
        )
    )


def sdk(url):
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


async def ask(c, model, text, session="alice", stream=False):
    r = await c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": text}],
        extra_headers={"X-Conversation-Id": session},
        stream=stream,
    )
    if not stream:
        return r.choices[0].message.content
    return "".join([ch.choices[0].delta.content or "" async for ch in r if ch.choices])


async def test_context_survives_failover_from_dify_to_openai(fakes):
    dify, up, backup = fakes
    async with serve_asgi(app_for(dify, up, backup)) as url:
        c = sdk(url)
        assert await ask(c, "support", "my order is 42") == "dify#1: my order is 42"
        dify.fail(500)
        dify.fail(500)
        assert await ask(c, "support", "where is it?") == "upstream: where is it?"
        sent = up.chat_requests()[-1].json["messages"]
        assert [(m["role"], m["content"]) for m in sent] == [
            ("system", "You help customers."),
            ("user", "my order is 42"),
            ("assistant", "dify#1: my order is 42"),
            ("user", "where is it?"),
        ]
        assert len(dify.requests) == 3  # 1 answer + 2 failed attempts (retried once)
        # Back on Dify: its own conversation continues (same conversation_id).
        assert await ask(c, "support", "thanks", stream=True) == "dify#2: thanks"


async def test_retry_after_honoured_then_same_provider_answers(fakes):
    dify, up, backup = fakes
    up.fail(429, headers={"Retry-After": "0.1"})
    async with serve_asgi(app_for(dify, up, backup)) as url:
        r = await sdk(url).chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "hi"}]
        )
    assert r.headers["x-switchboard-provider"] == "gpt"
    assert r.parse().choices[0].message.content == "upstream: hi"
    assert len(up.chat_requests()) == 2 and backup.requests == []


async def test_quota_429_fails_over_without_retry(fakes):
    dify, up, backup = fakes
    up.quota()
    async with serve_asgi(app_for(dify, up, backup)) as url:
        assert await ask(sdk(url), "chat", "hi", stream=True) == "backup answer"
    assert len(up.chat_requests()) == 1


async def test_connection_refused_moves_to_next(fakes):
    dify, up, backup = fakes
    async with serve_asgi(app_for(dify, up, backup)) as url:
        assert await ask(sdk(url), "far", "hi") == "backup answer"


async def test_timeout_is_retried_then_fails_over(fakes):
    dify, up, backup = fakes
    up.hang(2)
    up.hang(2)
    async with serve_asgi(app_for(dify, up, backup)) as url:
        assert await ask(sdk(url), "chat", "hi") == "backup answer"
    assert len(up.chat_requests()) == 2


async def test_stream_dying_midway_ends_with_error_and_no_switch(fakes):
    dify, up, backup = fakes
    up.die_after(2)
    async with serve_asgi(app_for(dify, up, backup)) as url:
        stream = await sdk(url).chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "tell me more"}], stream=True
        )
        got = []
        with pytest.raises(openai.APIError) as e:
            async for ch in stream:
                got.append(ch.choices[0].delta.content or "" if ch.choices else "")
    assert "".join(got) == "upstream: tell"
    assert "cut off" in str(e.value)
    assert backup.requests == []


async def test_every_provider_failing_is_502_naming_each(fakes):
    dify, up, backup = fakes
    up.fail(500, times=2)
    backup.fail(401)
    async with serve_asgi(app_for(dify, up, backup)) as url:
        with pytest.raises(openai.APIStatusError) as e:
            await ask(sdk(url), "chat", "hi")
    assert e.value.status_code == 502
    msg = e.value.message
    assert "gpt" in msg and "500" in msg and "spare" in msg and "401" in msg
    assert "sk-up" not in msg and "sk-spare" not in msg


async def test_open_circuit_skips_provider(fakes):
    dify, up, backup = fakes
    up.fail(500, times=2)
    async with serve_asgi(app_for(dify, up, backup, attempts=1, circuit_failures=2)) as url:
        c = sdk(url)
        for _ in range(3):
            assert await ask(c, "chat", "hi", session="") == "backup answer"
    assert len(up.chat_requests()) == 2  # third request skipped gpt: its circuit was open
