"""Key pools: the pool on its own, and on the `openai` provider against a fake upstream that
rejects or rate-limits specific keys."""

from __future__ import annotations

import aiohttp
import pytest

from providers.keypool import KeyPool, mask
from providers.openai import OpenAIConfig, OpenAIProvider
from proxy.errors import AuthFailed, ProviderUnavailable, QuotaExceeded, RateLimited
from proxy.types import ChatRequest, Message
from tests.fakes.openai_upstream import FakeOpenAI
from tests.providers.memstate import MemoryState

KEYS = ["sk-aaaa-1111", "sk-bbbb-2222", "sk-cccc-3333"]


def req(conv: str = "") -> ChatRequest:
    return ChatRequest((Message("user", "hi"),), conversation=conv)


@pytest.fixture
async def setup():
    async with FakeOpenAI() as fake, aiohttp.ClientSession() as http:
        yield fake, OpenAIProvider("pool", OpenAIConfig(kind="openai", base_url=fake.base_url, api_keys=KEYS), http)


# -- the pool on its own ---------------------------------------------------------------------


def test_fewest_in_flight_wins():
    pool = KeyPool(KEYS, "p")
    held = [pool.acquire() for _ in KEYS]
    assert sorted(k.value for k in held) == sorted(KEYS)  # one each while all are busy
    pool.release(held[1])
    assert pool.acquire() is held[1]  # the only key with nothing in flight


def test_sticky_conversation_moves_off_a_disabled_key_and_stays_there():
    pool = KeyPool(KEYS, "p")
    first = pool.acquire("c1")
    pool.release(first, AuthFailed("bad key", status=401))
    second = pool.acquire("c1")
    assert second is not first
    pool.release(second)
    assert all(pool.acquire("c1") is second for _ in range(3))


def test_cooldown_follows_retry_after():
    pool = KeyPool(KEYS[:2], "p")
    a = pool.acquire()
    pool.release(a, RateLimited("slow down", status=429, retry_after=0))
    assert [s["state"] for s in pool.status()] == ["ok", "ok"]  # Retry-After: 0 means at once
    b = pool.acquire()
    pool.release(b, RateLimited("slow down", status=429, retry_after=120))
    row = next(s for s in pool.status() if s["key"] == mask(b.value))
    assert str(row["state"]).startswith("cooldown until ") and "cooldown_until" in row


def test_all_cooling_down_raises_rate_limited_with_the_shortest_wait():
    pool = KeyPool(KEYS[:2], "p")
    for wait in (50, 20):
        pool.release(pool.acquire(), RateLimited("slow down", status=429, retry_after=wait))
    with pytest.raises(RateLimited) as e:
        pool.acquire()
    assert 0 < e.value.retry_after <= 20 and "no usable API key" in e.value.message
    assert pool.summary() == "2 keys (0 ok, 2 cooling down, 0 disabled)"


def test_other_failures_do_not_touch_the_key():
    pool = KeyPool(KEYS[:1], "p")
    pool.release(pool.acquire(), ProviderUnavailable("upstream 502", status=502))
    assert pool.status() == [{"key": "sk-…1111", "state": "ok", "in_flight": 0}]


def test_status_never_shows_a_key_in_full():
    assert mask("sk-aaaa-1111") == "sk-…1111"
    assert "aaaa" not in mask("sk-aaaa-1111")
    assert mask("abc") == "…" and mask("") == "(none)"


# -- on the provider ----------------------------------------------------------------------------


async def test_rejected_key_is_disabled_and_others_used(setup):
    fake, p = setup
    fake.key_rejected.add(KEYS[0])
    errors = 0
    for _ in range(6):
        try:
            await p.complete(req(), MemoryState())
        except AuthFailed:
            errors += 1
    assert errors == 1  # only the first use of the bad key failed; then it was out of the pool
    assert [r.key for r in fake.requests].count(KEYS[0]) == 1
    status = {s["key"]: s["state"] for s in p.key_status()}
    assert status[mask(KEYS[0])].startswith("disabled: AuthFailed") and status[mask(KEYS[1])] == "ok"
    assert "1 disabled" in p.describe() and "aaaa" not in p.describe()


async def test_rate_limited_key_cools_down(setup):
    fake, p = setup
    fake.key_rate_limited.add(KEYS[1])
    for _ in range(6):
        try:
            await p.complete(req(), MemoryState())
        except RateLimited as e:
            assert e.retry_after == 60
    assert [r.key for r in fake.requests].count(KEYS[1]) == 1
    assert [s["state"].startswith("cooldown") for s in p.key_status()] == [False, True, False]


async def test_streams_use_the_pool_too(setup):
    fake, p = setup
    fake.key_rejected.update(KEYS[:2])
    texts = []
    for _ in range(3):
        try:
            texts.append("".join([d.text async for d in p.stream(req(), MemoryState())]))
        except AuthFailed:
            pass
    assert texts == ["upstream: hi"] and sorted(r.key for r in fake.requests) == KEYS  # each key once
    assert all(s["in_flight"] == 0 for s in p.key_status())


async def test_quota_error_inside_a_stream_disables_the_key(setup):
    fake, p = setup
    fake.error_in_stream(after=0, code="insufficient_quota", message="You exceeded your current quota.")
    with pytest.raises(QuotaExceeded):
        [d async for d in p.stream(req("c"), MemoryState())]
    bad = fake.requests[-1].key
    assert next(s for s in p.key_status() if s["key"] == mask(bad))["state"].startswith("disabled: QuotaExceeded")


async def test_all_keys_out_raises_so_the_chain_moves_on(setup):
    fake, p = setup
    fake.key_rejected.update(KEYS)
    for _ in range(3):
        with pytest.raises(AuthFailed):
            await p.complete(req(), MemoryState())
    n = len(fake.requests)
    with pytest.raises(AuthFailed) as e:
        await p.complete(req(), MemoryState())
    assert len(fake.requests) == n and "no usable API key" in str(e.value)


async def test_conversation_sticks_to_its_key(setup):
    fake, p = setup
    for _ in range(4):
        await p.complete(req("conv-1"), MemoryState())
    for _ in range(4):
        await p.complete(req("conv-2"), MemoryState())
    keys = [r.key for r in fake.requests]
    assert len(set(keys[:4])) == 1 and len(set(keys[4:])) == 1


async def test_sequential_traffic_without_conversation_spreads(setup):
    fake, p = setup
    for _ in range(6):
        await p.complete(req(), MemoryState())
    assert {r.key for r in fake.requests} == set(KEYS)


def test_check_live_probes_each_key_masked(tmp_path, capsys):
    from proxy.cli import main
    from tests.servers import free_port

    cfg = tmp_path / "c.yaml"
    base = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: a dead upstream is not "ok"
    cfg.write_text(
        "store: {url: 'memory://'}\n"
        f"providers: {{pool: {{kind: openai, base_url: '{base}', api_keys: [sk-aaaa-1111, sk-bbbb-2222]}}}}\n"
        "channels: [{name: c, providers: [pool]}]\n"
    )
    assert main(["check", "--config", str(cfg), "--live"]) == 1
    out = capsys.readouterr().out
    for key in ("sk-…1111", "sk-…2222"):
        assert f"{key}     unreachable: cannot connect: Connection refused" in out
    assert "aaaa" not in out and "bbbb" not in out and "unusable: pool" in out


def test_news_of_a_key_goes_out_by_id_and_comes_back_to_the_same_key():
    from proxy.errors import AuthFailed, RateLimited

    told: list[dict[str, object]] = []
    here, there = KeyPool(["sk-aaaa1111", "sk-bbbb2222"], "p"), KeyPool(["sk-aaaa1111", "sk-bbbb2222"], "p")
    here.on_change = told.append
    here.release(here.acquire(), AuthFailed("Incorrect API key", provider="p", status=401))
    key = here.acquire()
    here.release(key, RateLimited("slow down", provider="p", status=429, retry_after=60))
    assert len(told) == 2 and all("sk-" not in str(n) for n in told)
    assert all(there.apply(n) for n in told)
    assert [k.disabled is not None for k in there.keys] == [k.disabled is not None for k in here.keys]
    assert sum(1 for k in there.keys if k.cooldown_until > 0) == 1
    assert not there.apply({"key": "not-this-one", "disabled": "x"})
    reordered = KeyPool(["sk-bbbb2222", "sk-aaaa1111", "sk-cccc3333"], "p")
    assert reordered.apply(told[0])  # the same key in another place is the same key
