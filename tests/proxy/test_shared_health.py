"""Two (then three) `python -m proxy serve` processes on one redis-server: a circuit opened on one
instance is open on the others (they stop calling the provider), also on an instance started
later; a key disabled (401) or cooling down (429) on one instance is not used by the other."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.fakes.openai_upstream import FakeOpenAI
from tests.instances import serving

KEY = "sk-shared-health"
HI = [{"role": "user", "content": "hi"}]


def config(redis: str, providers: dict[str, Any], chain: list[str]) -> dict[str, Any]:
    return {
        "store": {"url": redis},
        "keys": [{"key": KEY}],
        "failover": {"attempts": 1, "circuit_failures": 2, "circuit_cooldown": 600},
        "providers": providers,
        "channels": [{"name": "chat", "providers": chain, "history": 0}],
    }


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


async def answered_by(url: str) -> str:
    raw = await client(url).chat.completions.with_raw_response.create(model="chat", messages=HI)  # type: ignore[arg-type]
    return raw.headers["x-switchboard-provider"]


async def circuit(c: httpx.AsyncClient, url: str, provider: str) -> str:
    return str((await c.get(f"{url}/readyz")).json()["providers"][provider]["circuit"])


async def until(check: Any, what: str) -> None:
    for _ in range(400):
        if await check():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"not reached: {what}")


async def test_a_circuit_opened_on_one_instance_is_open_on_the_others(redis_url: str, tmp_path: Path):
    redis = f"{redis_url}?prefix=h{uuid.uuid4().hex[:8]}"
    async with FakeOpenAI(answer="from main") as main, FakeOpenAI(answer="from backup") as backup:
        providers = {
            "main": {"kind": "openai", "base_url": main.base_url, "api_key": "sk-m"},
            "backup": {"kind": "openai", "base_url": backup.base_url, "api_key": "sk-b"},
        }
        cfg = config(redis, providers, ["main", "backup"])
        async with serving(tmp_path, "a", cfg) as a, serving(tmp_path, "b", cfg) as b, httpx.AsyncClient() as c:
            assert await answered_by(b) == "main"
            main.fail(500, times=2)
            assert [await answered_by(a), await answered_by(a)] == ["backup", "backup"]  # opens main's circuit on A
            assert await circuit(c, a, "main") == "open"
            await until(lambda: _is(circuit(c, b, "main"), "open"), "B opens main's circuit")
            calls = len(main.chat_requests())
            assert [await answered_by(b) for _ in range(3)] == ["backup"] * 3
            assert len(main.chat_requests()) == calls  # B did not call main at all
            async with serving(tmp_path, "c", cfg) as late:  # started while the circuit is open
                assert await circuit(c, late, "main") == "open"
                assert await answered_by(late) == "backup"
            assert len(main.chat_requests()) == calls


async def test_a_key_disabled_or_cooling_down_on_one_instance_is_not_used_by_the_other(redis_url: str, tmp_path: Path):
    redis = f"{redis_url}?prefix=k{uuid.uuid4().hex[:8]}"
    async with FakeOpenAI(answer="pooled") as up, FakeOpenAI(answer="from backup") as backup:
        up.key_rejected.add("sk-revoked")  # 401
        up.key_rate_limited.add("sk-busy")  # 429, Retry-After 60
        providers = {
            "pool": {"kind": "openai", "base_url": up.base_url, "api_keys": ["sk-good", "sk-revoked", "sk-busy"]},
            "backup": {"kind": "openai", "base_url": backup.base_url, "api_key": "sk-b"},
        }
        cfg = config(redis, providers, ["pool", "backup"])
        cfg["failover"]["circuit_failures"] = 100  # this test is about keys, not circuits
        async with serving(tmp_path, "a", cfg) as a, serving(tmp_path, "b", cfg) as b:
            for _ in range(12):  # until A has met both bad keys
                await answered_by(a)
                if {"sk-revoked", "sk-busy"} <= {r.key for r in up.chat_requests()}:
                    break
            assert {"sk-revoked", "sk-busy"} <= {r.key for r in up.chat_requests()}
            log = tmp_path / "b.log"

            async def told() -> bool:
                text = log.read_text()
                return "is disabled" in text and "is cooling down" in text

            await until(told, "B hears of both keys")
            seen = len(up.chat_requests())
            assert [await answered_by(b) for _ in range(6)] == ["pool"] * 6
            assert {r.key for r in up.chat_requests()[seen:]} == {"sk-good"}
            assert "sk-revoked" not in log.read_text() and "sk-busy" not in log.read_text()  # ids, never keys


async def _is(value: Any, expected: str) -> bool:
    return await value == expected
