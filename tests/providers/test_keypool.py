"""Key pools on the `openai` provider, against a fake upstream that rejects specific keys."""

from __future__ import annotations

import aiohttp
import pytest

from providers.keypool import mask
from providers.openai import OpenAIConfig, OpenAIProvider
from proxy.engine import NO_STATE
from proxy.errors import AuthFailed, RateLimited
from proxy.types import ChatRequest, Message
from tests.fakes.openai_upstream import FakeOpenAI

KEYS = ["sk-aaaa-1111", "sk-bbbb-2222", "sk-cccc-3333"]


def req(conv: str = "") -> ChatRequest:
    return ChatRequest((Message("user", "hi"),), conversation=conv)


@pytest.fixture
async def setup():
    async with FakeOpenAI() as fake, aiohttp.ClientSession() as http:
        yield fake, OpenAIProvider("pool", OpenAIConfig(kind="openai", base_url=fake.base_url, api_keys=KEYS), http)


async def test_rejected_key_is_disabled_and_others_used(setup):
    fake, p = setup
    fake.key_rejected.add(KEYS[0])
    errors = 0
    for _ in range(6):
        try:
            await p.complete(req(), NO_STATE)
        except AuthFailed:
            errors += 1
    assert errors == 1  # only the first use of the bad key failed; then it was out of the pool
    assert [r.key for r in fake.requests].count(KEYS[0]) == 1
    status = {s["key"]: s["state"] for s in p.key_status()}
    assert status[mask(KEYS[0])].startswith("disabled") and status[mask(KEYS[1])] == "ok"


async def test_rate_limited_key_cools_down(setup):
    fake, p = setup
    fake.key_rate_limited.add(KEYS[1])
    for _ in range(6):
        try:
            await p.complete(req(), NO_STATE)
        except RateLimited:
            pass
    assert [r.key for r in fake.requests].count(KEYS[1]) == 1
    assert any(s["state"].startswith("cooldown") for s in p.key_status())


async def test_all_keys_out_raises_so_the_chain_moves_on(setup):
    fake, p = setup
    fake.key_rejected.update(KEYS)
    for _ in range(3):
        with pytest.raises(AuthFailed):
            await p.complete(req(), NO_STATE)
    n = len(fake.requests)
    with pytest.raises(AuthFailed) as e:
        await p.complete(req(), NO_STATE)
    assert len(fake.requests) == n and "no usable API key" in str(e.value)


async def test_conversation_sticks_to_its_key(setup):
    fake, p = setup
    for _ in range(4):
        await p.complete(req("conv-1"), NO_STATE)
    assert len({r.key for r in fake.requests}) == 1


def test_status_never_shows_a_key_in_full():
    assert mask("sk-aaaa-1111") == "sk-…1111"
    assert "aaaa" not in mask("sk-aaaa-1111")


def test_check_live_shows_key_health_masked(tmp_path, capsys):
    from proxy.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "store: {url: 'memory://'}\n"
        "providers: {pool: {kind: openai, base_url: 'http://127.0.0.1:9/v1', api_keys: [sk-aaaa-1111, sk-bbbb-2222]}}\n"
        "channels: [{name: c, providers: [pool]}]\n"
    )
    assert main(["check", "--config", str(cfg), "--live"]) == 0
    out = capsys.readouterr().out
    assert "pool: key sk-…1111 ok" in out and "pool: key sk-…2222 ok" in out
    assert "aaaa" not in out and "bbbb" not in out
