"""A limit holds across instances: two `python -m proxy serve` processes on one redis-server
share the counters and the concurrency slots."""

from __future__ import annotations

import uuid
from pathlib import Path

import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.instances import serving

ROOT = Path(__file__).parents[2]
KEY = "sk-shared"
HI = [{"role": "user", "content": "hi"}]


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


async def test_two_processes_on_one_redis_share_rpm_and_concurrency(redis_url: str, tmp_path: Path):
    async with FakeOpenAI() as up:
        up.stall_after(1, 30)  # the first stream holds its slot until its client leaves
        config = {
            "store": {"url": f"{redis_url}?prefix=limits-{uuid.uuid4().hex[:8]}"},
            "keys": [{"key": KEY, "name": "shared"}],
            "providers": {"up": {"kind": "openai", "base_url": up.base_url, "api_key": "sk-up", "model": "m"}},
            "channels": [{"name": "gpt", "providers": ["up"]}, {"name": "slow", "providers": ["up"]}],
            "failover": {"attempts": 1},
            "limits": {
                "keys": {"shared": {"rpm": 4, "request_window": 86400}},
                "channels": {"slow": {"concurrent": 1}},
            },
        }
        async with serving(tmp_path, "a", config) as a, serving(tmp_path, "b", config) as b:
            stream = await client(a).chat.completions.create(model="slow", messages=HI, stream=True)
            await anext(stream.__aiter__())  # holds the channel's one slot, in process a
            with pytest.raises(openai.RateLimitError) as busy:
                await client(b).chat.completions.create(model="slow", messages=HI)
            await stream.close()
            await client(a).chat.completions.create(model="gpt", messages=HI)
            await client(b).chat.completions.create(model="gpt", messages=HI)  # the key's 4th (busy counted)
            for url in (a, b):
                with pytest.raises(openai.RateLimitError) as over:
                    await client(url).chat.completions.create(model="gpt", messages=HI)
                assert over.value.code == "rate_limit_exceeded"
    assert busy.value.code == "concurrency_limit_exceeded"
    assert len(up.requests) == 3
