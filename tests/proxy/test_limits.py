"""Limits and budgets on the OpenAI front door, driven with the official `openai` SDK against a
real server and the fake upstream: 429s in OpenAI's shape with Retry-After and no upstream call,
token budgets charged from the upstream's usage, concurrency, a window that ends, metrics, and
config validation."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai
import pytest

from proxy.app import create_app
from proxy.config import parse_config
from proxy.errors import ConfigError
from proxy.limits import LimitsConfig, compile_limits
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import serve_asgi

KEY, OTHER = "sk-limits-a", "sk-limits-b"
HI = [{"role": "user", "content": "hi"}]


def config(upstream: str, limits: dict[str, Any], store: str = "memory://") -> Any:
    return parse_config(
        {
            "store": {"url": store},
            "keys": [{"key": KEY, "name": "alice"}, {"key": OTHER}],
            "providers": {"up": {"kind": "openai", "base_url": upstream, "api_key": "sk-up", "model": "m"}},
            "channels": [{"name": "gpt", "providers": ["up"]}, {"name": "other", "providers": ["up"]}],
            "failover": {"attempts": 1},
            "limits": limits,
        },
        {},
    )


def client(url: str, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


async def ask(url: str, key: str = KEY, model: str = "gpt") -> str | None:
    r = await client(url, key).chat.completions.create(model=model, messages=HI)
    return r.choices[0].message.content


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_rpm_over_the_limit_is_a_429_and_nothing_goes_upstream(tmp_path, store):
    url_of = {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path}/s.db"}
    async with FakeOpenAI() as up:
        limits = {"keys": {"*": {"rpm": 2, "request_window": 86400}}}
        async with serve_asgi(create_app(config(up.base_url, limits, url_of[store]))) as url:
            assert [await ask(url), await ask(url)] == ["upstream: hi"] * 2
            with pytest.raises(openai.RateLimitError) as e:
                await ask(url)
            assert len(up.requests) == 2  # the refused one never reached the upstream
            assert await ask(url, OTHER) == "upstream: hi"  # each key counts on its own
            async with httpx.AsyncClient() as h:
                metrics = (await h.get(f"{url}/metrics")).text
    err = e.value
    assert err.status_code == 429 and err.code == "rate_limit_exceeded"
    assert err.body["type"] == "rate_limit_error"  # type: ignore[index]
    assert "key 'alice'" in err.message and "2 requests per day" in err.message
    assert 1 <= int(err.response.headers["retry-after"]) <= 86400
    assert 'switchboard_limited_requests_total{kind="rpm",name="alice",scope="key"} 1.0' in metrics


async def test_channel_rpm_holds_for_every_key_and_a_named_key_overrides_star():
    async with FakeOpenAI() as up:
        limits = {
            "keys": {"*": {"rpm": 1, "request_window": 86400}, "alice": {"rpm": None}},
            "channels": {"gpt": {"rpm": 3, "request_window": 86400}},
        }
        async with serve_asgi(create_app(config(up.base_url, limits))) as url:
            assert await ask(url) and await ask(url)  # alice: no key limit of her own
            assert await ask(url, OTHER)  # the channel's third
            with pytest.raises(openai.RateLimitError) as e:
                await ask(url)
            assert "channel 'gpt'" in e.value.message
            with pytest.raises(openai.RateLimitError) as e:
                await ask(url, OTHER, "other")  # keys[1]'s own limit: one a day
            assert "key 'keys[1]'" in e.value.message
    assert len(up.requests) == 3


async def test_tokens_per_day_run_out_as_usage_accumulates():
    """Each answer costs 7 tokens (the fake reports 5 prompt + 2 completion): 3 fit in 20; the
    budget is checked before a request, so the third (14 spent, 6 left) goes through and the
    fourth finds it used up. Streams charge the usage they reported, when they end."""
    async with FakeOpenAI() as up:
        limits = {"keys": {"alice": {"tokens_per_day": 20}}}
        async with serve_asgi(create_app(config(up.base_url, limits))) as url:
            assert await ask(url) and await ask(url)
            stream = await client(url).chat.completions.create(model="gpt", messages=HI, stream=True)
            assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "upstream: hi"
            with pytest.raises(openai.RateLimitError) as e:
                await ask(url)
            assert await ask(url, OTHER)  # no budget on the other key
    assert e.value.code == "tokens_per_day_exceeded" and "20 tokens per day" in e.value.message
    left = 86400 - time.time() % 86400  # seconds to the UTC day's end
    assert left - 5 <= int(e.value.response.headers["retry-after"]) <= left + 5
    assert len(up.requests) == 4


async def test_concurrency_limit_with_a_slow_stream_and_the_slot_comes_back():
    async with FakeOpenAI() as up:
        up.stall_after(1, 30)  # the first stream sends one word, then waits
        limits = {"channels": {"gpt": {"concurrent": 1}}}
        async with serve_asgi(create_app(config(up.base_url, limits))) as url:
            slow = await client(url).chat.completions.create(model="gpt", messages=HI, stream=True)
            chunks = slow.__aiter__()
            await anext(chunks)  # the slow answer is under way: it holds the one slot
            with pytest.raises(openai.RateLimitError) as e:
                await ask(url, OTHER)
            assert e.value.code == "concurrency_limit_exceeded" and e.value.response.headers["retry-after"] == "1"
            assert await ask(url, OTHER, "other") == "upstream: hi"  # another channel: no limit
            await slow.close()  # the client leaves: the stream ends and gives its slot back
            assert await eventually_answered(url)
    assert len(up.requests) == 3


async def eventually_answered(url: str) -> str | None:
    for _ in range(250):
        try:
            return await ask(url, OTHER)
        except openai.RateLimitError:
            await asyncio.sleep(0.02)
    raise AssertionError("the concurrency slot never came back")


async def test_a_window_that_ends_restores_service():
    async with FakeOpenAI() as up:
        limits = {"keys": {"alice": {"rpm": 1, "request_window": 0.5}}}
        async with serve_asgi(create_app(config(up.base_url, limits))) as url:
            await ask(url)
            while True:  # until a request falls into a full window (the first may end at once)
                try:
                    await ask(url)
                except openai.RateLimitError as e:
                    refused = e
                    break
            await asyncio.sleep(float(refused.response.headers["retry-after"]))  # whole seconds, ≥ the window's end
            assert await ask(url) == "upstream: hi"


@pytest.mark.parametrize(
    "limits,path,valid",
    [
        ({"keys": {"bob": {"rpm": 1}}}, "limits.keys.bob", "alice"),
        ({"channels": {"nope": {"rpm": 1}}}, "limits.channels.nope", "gpt, other"),
        ({"users": {"slack:U1": {"rpm": 1}}}, "limits.users.slack:U1", "none configured"),
        ({"users": {"U1": {"rpm": 1}}}, "limits.users.U1", ""),
        ({"platforms": {"slack": {"message": "x"}}}, "limits.platforms.slack", "none configured"),
        ({"keys": {"*": {"rpm": 0}}}, "limits.keys.*.rpm", ""),
        ({"keys": {"*": {"rps": 5}}}, "limits.keys.*.rps", ""),
    ],
)
def test_config_errors_name_the_path_and_what_is_valid(limits, path, valid):
    with pytest.raises(ConfigError) as e:
        config("http://127.0.0.1:9/v1", limits)
    assert e.value.path == path
    assert valid in (e.value.valid or "")


def test_limits_are_compiled_into_settings():
    s = config("http://127.0.0.1:9/v1", {"keys": {"*": {"rpm": 5}}})
    assert {r.name for r in s.limits.keys.values()} == {"alice", "keys[1]"}
    assert not config("http://127.0.0.1:9/v1", {}).limits.active
    users = LimitsConfig.model_validate({"users": {"*": {"rpm": 2}, "nas:4": {"rpm": None}}})
    compiled = compile_limits(users, [], [], ["nas"])
    assert compiled.user("nas", "5") is not None and compiled.user("nas", "4") is None  # lifted for 4


async def test_a_days_token_budget_survives_a_restart_on_sqlite(tmp_path):
    store = f"sqlite:///{tmp_path}/s.db"
    async with FakeOpenAI() as up:
        limits = {"keys": {"alice": {"tokens_per_day": 10}}}
        async with serve_asgi(create_app(config(up.base_url, limits, store))) as url:
            assert await ask(url) and await ask(url)  # 14 tokens spent
            with pytest.raises(openai.RateLimitError):
                await ask(url)
        async with serve_asgi(create_app(config(up.base_url, limits, store))) as url:
            with pytest.raises(openai.RateLimitError) as e:
                await ask(url)
    assert e.value.code == "tokens_per_day_exceeded" and len(up.requests) == 2
