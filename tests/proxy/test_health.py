"""`GET /readyz` tells the truth: per provider (enabled or why not, circuit state), per channel
(can it be served), the store; 503 only when no channel can be served. Driven against a real
server, with circuits opened by real failing requests to a fake upstream."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from proxy.app import create_app
from proxy.config import parse_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import serve_asgi

KEY = "sk-test-health"
UP_KEY = "sk-upstream-secret-health-1"


def settings(upstream: str, channels: list[dict[str, Any]], cooldown: float = 600) -> Any:
    return parse_config(
        {
            "store": {"url": "memory://"},
            "keys": [{"key": KEY}],
            "failover": {"attempts": 1, "circuit_failures": 2, "circuit_cooldown": cooldown},
            "providers": {
                "echo": {"kind": "echo"},
                "up": {"kind": "openai", "base_url": upstream, "api_key": UP_KEY, "model": "m"},
                "off": {"kind": "openai", "api_key": "${HEALTH_TEST_UNSET_KEY}"},
            },
            "channels": channels,
        },
        {},
    )


async def fail_twice(url: str, fake: FakeOpenAI, channel: str) -> None:
    """Two failed requests in a row: the circuit of `up` opens (circuit_failures: 2)."""
    fake.fail(500, times=2)
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as e:
            await client.chat.completions.create(model=channel, messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == 502


async def readyz(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as h:
        return await h.get(f"{url}/readyz")


async def test_all_up_is_ready_with_every_provider_and_channel():
    async with FakeOpenAI() as fake:
        chans = [{"name": "main", "providers": ["up", "echo"]}]
        async with serve_asgi(create_app(settings(fake.base_url, chans))) as url:
            r = await readyz(url)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "ready" and body["store"] == "ok"
    assert body["providers"]["up"] == {"kind": "openai", "enabled": True, "circuit": "closed"}
    assert body["providers"]["echo"] == {"kind": "echo", "enabled": True, "circuit": "closed"}
    assert body["channels"]["main"] == {"servable": True, "providers": ["up", "echo"], "available": ["up", "echo"]}


async def test_disabled_provider_says_why_without_secrets_and_its_channel_is_unservable():
    async with FakeOpenAI() as fake:
        chans = [{"name": "demo", "providers": ["echo"]}, {"name": "gpt", "providers": ["off"]}]
        async with serve_asgi(create_app(settings(fake.base_url, chans))) as url:
            r = await readyz(url)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "degraded"
    assert body["providers"]["off"] == {
        "kind": "openai",
        "enabled": False,
        "disabled": "HEALTH_TEST_UNSET_KEY is not set",
    }
    assert body["channels"]["gpt"] == {"servable": False, "providers": ["off"], "available": []}
    assert body["channels"]["demo"]["servable"] is True
    assert UP_KEY not in r.text and KEY not in r.text


async def test_open_circuit_shows_seconds_left_and_other_channels_keep_it_ready():
    async with FakeOpenAI() as fake:
        chans = [{"name": "main", "providers": ["up"]}, {"name": "demo", "providers": ["echo"]}]
        async with serve_asgi(create_app(settings(fake.base_url, chans))) as url:
            assert (await readyz(url)).json()["channels"]["main"]["servable"] is True
            await fail_twice(url, fake, "main")
            r = await readyz(url)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "degraded"
    up = body["providers"]["up"]
    assert up["enabled"] is True and up["circuit"] == "open" and 0 < up["open_seconds_left"] <= 600
    assert body["channels"]["main"] == {"servable": False, "providers": ["up"], "available": []}
    assert body["channels"]["demo"]["servable"] is True


async def test_circuit_past_its_cooldown_is_half_open_and_serves():
    async with FakeOpenAI() as fake:
        chans = [{"name": "main", "providers": ["up"]}]
        async with serve_asgi(create_app(settings(fake.base_url, chans, cooldown=0))) as url:
            await fail_twice(url, fake, "main")
            r = await readyz(url)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "ready"
    assert body["providers"]["up"] == {"kind": "openai", "enabled": True, "circuit": "half-open"}
    assert body["channels"]["main"]["servable"] is True


async def test_no_servable_channel_is_503():
    async with FakeOpenAI() as fake:
        chans = [{"name": "main", "providers": ["up", "off"]}, {"name": "gpt", "providers": ["off"]}]
        async with serve_asgi(create_app(settings(fake.base_url, chans))) as url:
            assert (await readyz(url)).status_code == 200
            await fail_twice(url, fake, "main")
            r = await readyz(url)
            async with httpx.AsyncClient() as h:
                alive = await h.get(f"{url}/healthz")
    body = r.json()
    assert r.status_code == 503 and body["status"] == "not ready"
    assert "no channel can be served" in body["reason"]
    assert body["store"] == "ok"
    assert body["providers"]["up"]["circuit"] == "open"
    assert body["providers"]["off"]["enabled"] is False
    assert {name: c["servable"] for name, c in body["channels"].items()} == {"main": False, "gpt": False}
    assert alive.status_code == 200 and alive.json() == {"status": "ok"}  # liveness is not readiness


async def test_unreachable_store_is_503_and_still_reports_providers():
    async with FakeOpenAI() as fake:
        app = create_app(settings(fake.base_url, [{"name": "demo", "providers": ["echo"]}]))
        async with serve_asgi(app) as url:

            async def down() -> bool:
                raise ConnectionError("store down")

            app.state.engine.store.ping = down
            r = await readyz(url)
    body = r.json()
    assert r.status_code == 503 and body["status"] == "not ready" and body["reason"] == "store unreachable"
    assert body["store"] == "unreachable" and body["channels"]["demo"]["servable"] is True
