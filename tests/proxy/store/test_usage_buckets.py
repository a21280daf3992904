"""Usage buckets in every store: added up per hour and combination, read back from an hour on;
the recorder batches notes and keeps what a failed write could not store."""

from __future__ import annotations

import time

from proxy.contracts import Store, UsageRow
from proxy.store.memory import MemoryStore
from proxy.types import Message, Usage
from proxy.usage import Recorder, estimate, parse_since, report, table

H = 3600


def row(hour: int, channel: str = "demo", user: str = "", **counts: int) -> UsageRow:
    return UsageRow(hour, channel, "main", "gpt-4o", "team-a", "slack" if user else "", user, **counts)


def by_dims(rows: list[UsageRow]) -> dict[tuple[int, str, str], tuple[int, int, int, int]]:
    return {(r.hour, r.channel, r.user): (r.prompt, r.completion, r.requests, r.estimated) for r in rows}


async def test_buckets_add_up_per_hour_and_combination(store: Store):
    now = int(time.time() // H * H)
    await store.add_usage([row(now, prompt=10, completion=5, requests=1), row(now - 3 * H, prompt=1, requests=1)])
    await store.add_usage(
        [row(now, prompt=7, completion=3, requests=1, estimated=1), row(now, user="U1", prompt=2, requests=1)]
    )
    await store.add_usage([row(now - 100 * H, prompt=99, requests=1)])
    got = by_dims(await store.usage(now - 3 * H))
    assert got == {
        (now, "demo", ""): (17, 8, 2, 1),
        (now - 3 * H, "demo", ""): (1, 0, 1, 0),
        (now, "demo", "U1"): (2, 0, 1, 0),
    }
    assert len(await store.usage(now - 200 * H)) == 4
    assert await store.usage(now + H) == []


async def test_the_recorder_writes_in_batches_and_estimates_what_was_not_reported(store: Store):
    rec = Recorder(store, flush_every=3600)  # written by close() in this test
    rec.note(channel="demo", provider="main", model="m", key="k", usage=Usage(12, 30, 42))
    rec.note(channel="demo", provider="main", model="m", key="k", usage=Usage(8, 10, 18))
    p, c, est = rec.note(
        channel="demo",
        provider="main",
        model="m",
        key="k",
        usage=None,
        prompt=[Message("user", "abcd" * 10)],
        answer="你好世界",
    )
    assert (c, est) == (4, True) and p == 10 + 4
    assert await store.usage(time.time() - H) == []  # nothing written yet: batched
    await rec.close()
    [only] = await store.usage(time.time() - H)
    assert (only.prompt, only.completion, only.requests, only.estimated) == (34, 44, 3, 1)


async def test_a_failed_write_keeps_the_rows_for_the_next():
    class Flaky(MemoryStore):
        fail = True

        async def add_usage(self, rows: list[UsageRow]) -> None:
            if self.fail:
                raise ConnectionError("store away")
            await super().add_usage(rows)

    store = Flaky()
    rec = Recorder(store, flush_every=3600)
    rec.note(channel="c", provider="p", model="m", usage=Usage(1, 2, 3))
    await rec.flush()
    rec.note(channel="c", provider="p", model="m", usage=Usage(1, 2, 3))
    store.fail = False
    await rec.close()
    [only] = await store.usage(time.time() - H)
    assert (only.prompt, only.completion, only.requests) == (2, 4, 2)


def test_reports_group_and_price():
    class Price:
        def __init__(self, prompt: float, completion: float) -> None:
            self.prompt, self.completion = prompt, completion

    rows = [
        UsageRow(0, "a", "p1", "m1", "k", "", "", 1_000_000, 500_000, 10, 0),
        UsageRow(0, "b", "p1", "m2", "k", "", "", 10, 10, 1, 1),
        UsageRow(H, "a", "p2", "m1", "k", "", "", 0, 500_000, 5, 0),
    ]
    by_channel = report(rows, "channel", {"m1": Price(2.5, 10.0)})
    assert by_channel[0] == {
        "channel": "a",
        "requests": 15,
        "prompt_tokens": 1_000_000,
        "completion_tokens": 1_000_000,
        "total_tokens": 2_000_000,
        "estimated_requests": 0,
        "cost": 12.5,
    }
    assert by_channel[1]["cost"] is None  # m2 has no price
    assert [g["provider"] for g in report(rows, "provider")] == ["p1", "p2"]
    assert "cost" not in report(rows, "model")[0]
    text = table(by_channel, "channel")
    assert text.splitlines()[0].split() == ["channel", "requests", "prompt", "completion", "total", "estimated", "cost"]
    assert text.splitlines()[-1].split()[:2] == ["(total)", "16"] and text.splitlines()[-1].endswith("?")


def test_durations_and_estimates():
    assert parse_since("24h", now=100_000.0) == 100_000.0 - 86400
    assert parse_since("7d", now=10**7) == 10**7 - 7 * 86400
    for bad in ("", "7", "1w", "-1d", "d7"):
        try:
            parse_since(bad)
        except ValueError as e:
            assert "24h" in str(e)
        else:
            raise AssertionError(bad)
    assert estimate("") == 0 and estimate("abcd") == 1 and estimate("你好") == 2 and estimate("hi 你好") == 3
