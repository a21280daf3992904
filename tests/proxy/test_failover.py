"""Unit tests of the failover policy with scripted in-process providers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from proxy.config import FailoverConfig
from proxy.contracts import AdapterConfig, Provider
from proxy.engine import NO_STATE
from proxy.errors import (
    AuthFailed,
    ChainFailed,
    Misconfigured,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    RequestRejected,
    StreamInterrupted,
)
from proxy.failover import Failover, Outcome
from proxy.types import ChatRequest, Delta, Message


class Scripted(Provider):
    """Fails with the queued errors, then answers `name: ok` in two deltas."""

    config_model = AdapterConfig

    def __init__(self, name: str, errors: list[Exception] | None = None, die_after_first: bool = False):
        super().__init__(name, AdapterConfig(kind="scripted"), None)  # type: ignore[arg-type]
        self.errors = list(errors or [])
        self.calls = 0
        self.die_after_first = die_after_first
        self.closed = 0

    async def stream(self, request, state) -> AsyncIterator[Delta]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        try:
            yield Delta(text=f"{self.name}:")
            if self.die_after_first:
                raise ProviderUnavailable("connection reset", provider=self.name)
            yield Delta(text=" ok", finish_reason="stop")
        finally:
            self.closed += 1


REQ = ChatRequest((Message("user", "hi"),))
FAST = FailoverConfig(
    attempts=3, backoff_base=0.001, backoff_max=0.002, retry_after_max=1, circuit_failures=2, circuit_cooldown=60
)


def chain(*providers: Scripted, config: FailoverConfig = FAST) -> tuple[Failover, list[str]]:
    return Failover({p.name: p for p in providers}, config), [p.name for p in providers]


async def collect(f: Failover, names: list[str]) -> tuple[str, str]:
    out = Outcome()
    text = "".join([d.text async for d in f.stream("c", names, REQ, lambda n: NO_STATE, out)])
    return out.provider, text


async def test_retryable_error_is_retried_on_same_provider():
    a = Scripted("a", [ProviderUnavailable("500", status=500), ProviderUnavailable("502", status=502)])
    f, names = chain(a, Scripted("b"))
    assert await collect(f, names) == ("a", "a: ok")
    assert a.calls == 3


async def test_exhausted_retries_fail_over_to_next():
    a = Scripted("a", [ProviderUnavailable("boom", status=500)] * 3)
    b = Scripted("b")
    f, names = chain(a, b)
    assert await collect(f, names) == ("b", "b: ok")
    assert (a.calls, b.calls) == (3, 1)


@pytest.mark.parametrize(
    "err",
    [QuotaExceeded("quota", status=429), AuthFailed("bad key", status=401), Misconfigured("no model", status=404)],
)
async def test_non_retryable_moves_on_without_retry(err):
    a = Scripted("a", [err])
    f, names = chain(a, Scripted("b"))
    assert await collect(f, names) == ("b", "b: ok")
    assert a.calls == 1


async def test_a_rejected_request_ends_the_chain_and_counts_against_no_circuit():
    """The caller's error goes back to the caller: no retry, no next provider, no circuit."""
    a, b = Scripted("a", [RequestRejected("bad temperature", status=400)] * 4), Scripted("b")
    f, names = chain(a, b)
    for _ in range(4):  # more than circuit_failures
        with pytest.raises(RequestRejected) as e:
            await collect(f, names)
        assert e.value.provider == "a" and e.value.status == 400
    assert (a.calls, b.calls) == (4, 0)
    assert f.circuits["a"].state(0) == "closed"
    assert await collect(f, names) == ("a", "a: ok")  # the next valid request is answered by a


async def test_a_misconfigured_provider_fails_over_without_opening_its_circuit():
    a = Scripted("a", [Misconfigured("model not found", status=404)] * 5)
    f, names = chain(a, Scripted("b"))
    for _ in range(4):
        assert await collect(f, names) == ("b", "b: ok")
    assert f.circuits["a"].state(0) == "closed"


async def test_retry_after_is_honoured_and_long_one_fails_over():
    a = Scripted("a", [RateLimited("slow down", status=429, retry_after=0.05)])
    f, names = chain(a, Scripted("b"))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await collect(f, names) == ("a", "a: ok")
    assert loop.time() - t0 >= 0.05  # waited at least what the upstream asked (not a speed assertion)
    a2 = Scripted("a", [RateLimited("come back in an hour", status=429, retry_after=3600)])
    f, names = chain(a2, Scripted("b"))
    assert await collect(f, names) == ("b", "b: ok")
    assert a2.calls == 1


async def test_circuit_opens_and_skips_provider():
    a = Scripted("a", [AuthFailed("x")] * 10)
    b = Scripted("b")
    f, names = chain(a, b)
    for _ in range(2):
        await collect(f, names)
    assert a.calls == 2
    assert await collect(f, names) == ("b", "b: ok")
    assert a.calls == 2  # skipped: circuit open
    assert not f.circuits["a"].allows(time.monotonic())


async def test_all_failed_lists_every_attempt():
    a = Scripted("a", [AuthFailed("bad key", status=401)])
    b = Scripted("b", [ProviderUnavailable("down", status=503)] * 3)
    f, names = chain(a, b)
    with pytest.raises(ChainFailed) as e:
        await collect(f, names)
    assert [p for p, _ in e.value.attempts] == ["a", "b"]
    assert "bad key" in str(e.value) and "503" in str(e.value)


async def test_no_switch_after_first_token():
    a = Scripted("a", die_after_first=True)
    b = Scripted("b")
    f, names = chain(a, b)
    out = Outcome()
    got = []
    with pytest.raises(StreamInterrupted):
        async for d in f.stream("c", names, REQ, lambda n: NO_STATE, out):
            got.append(d.text)
    assert got == ["a:"] and b.calls == 0 and a.closed == 1


async def test_complete_fails_over():
    a = Scripted("a", [ProviderUnavailable("x", status=500)] * 3)
    f, names = chain(a, Scripted("b"))
    name, result = await f.complete("c", names, REQ, lambda n: NO_STATE)
    assert (name, result.text) == ("b", "b: ok")


async def test_closing_stream_early_closes_provider():
    a = Scripted("a")
    f, names = chain(a)
    stream = f.stream("c", names, REQ, lambda n: NO_STATE, Outcome())
    assert (await stream.__anext__()).text == "a:"
    await stream.aclose()
    assert a.closed == 1
