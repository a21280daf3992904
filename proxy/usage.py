"""Usage accounting: who spent how many tokens, on which channel, provider and model.

Every answer is noted (`Recorder.note`, synchronous and cheap: a dict update) with the tokens
the upstream reported (OpenAI `usage`, Dify `message_end`, LiteLLM usage); when it reported
none, an estimate (`estimate`) is noted and the request counted as estimated. Notes are added up
in memory per hour and combination (channel, provider, model, key name, platform, user) and
written to the store in batches, off the request path (`FLUSH_EVERY`, and at shutdown). A failed
write keeps its rows for the next one. With Redis the buckets of every instance add up.

`report(rows, by, prices)` groups buckets for `switchboard usage` and `GET /admin/usage`;
`prices:` in the config (per model, per million tokens) gives a cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from proxy.contracts import Store, UsageRow
from proxy.types import Message, Usage

log = logging.getLogger("switchboard.usage")

#: Seconds between batched writes.
FLUSH_EVERY = 2.0
#: Seconds a bucket is kept in the store.
RETENTION = 92 * 86400
#: Rows kept in memory while the store does not take them (then the oldest are dropped, logged).
MAX_PENDING = 100_000

#: Told of each noted answer: channel, model, prompt tokens, completion tokens (for /metrics).
TokenObserver = Callable[[str, str, int, int], None]

By = Literal["channel", "provider", "model", "key", "platform", "user"]
BY: tuple[By, ...] = ("channel", "provider", "model", "key", "platform", "user")

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def estimate(text: str) -> int:
    """Tokens in `text`, roughly: one per CJK character, one per 4 other characters (the usual
    rule for English with OpenAI's tokenizers). Used only when the upstream reports nothing."""
    if not text:
        return 0
    cjk = len(_CJK.findall(text))
    return cjk + math.ceil((len(text) - cjk) / 4)


def estimate_prompt(messages: Iterable[Message]) -> int:
    return sum(estimate(m.text()) + 4 for m in messages)  # + a few per message for its framing


def hour_of(t: float) -> int:
    return int(t // 3600 * 3600)


def parse_since(text: str, now: float | None = None) -> float:
    """`24h`, `7d`, `30d`, `90m` → the epoch time that long ago. ValueError for anything else."""
    m = re.fullmatch(r"\s*(\d+)\s*([mhd])\s*", text)
    if m is None:
        raise ValueError(f"{text!r} is not a duration such as 24h, 7d or 30d")
    seconds = int(m.group(1)) * {"m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return (time.time() if now is None else now) - seconds


class Recorder:
    """Notes answers, adds them up per hour bucket, writes them to the store in batches."""

    def __init__(self, store: Store, *, flush_every: float = FLUSH_EVERY, observe: TokenObserver | None = None) -> None:
        self.store = store
        self.flush_every = flush_every
        self.observe = observe
        self._pending: dict[tuple[int, tuple[str, ...]], list[int]] = {}
        self._task: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()

    def note(
        self,
        *,
        channel: str,
        provider: str,
        model: str | None,
        key: str = "",
        platform: str = "",
        user: str = "",
        usage: Usage | None,
        prompt: Iterable[Message] = (),
        answer: str = "",
    ) -> tuple[int, int, bool]:
        """Note one answer; returns (prompt tokens, completion tokens, estimated)."""
        if usage is not None and (usage.prompt_tokens or usage.completion_tokens):
            p, c, est = usage.prompt_tokens, usage.completion_tokens, False
        else:
            p, c, est = estimate_prompt(prompt), estimate(answer), True
        bucket = (hour_of(time.time()), (channel, provider, model or "", key, platform, user))
        counts = self._pending.get(bucket)
        if counts is None:
            if len(self._pending) >= MAX_PENDING:
                self._pending.pop(next(iter(self._pending)))
                log.warning("usage: the store has not taken usage for a while; the oldest bucket was dropped")
            counts = self._pending[bucket] = [0, 0, 0, 0]
        counts[0] += p
        counts[1] += c
        counts[2] += 1
        counts[3] += est
        if self.observe is not None:
            self.observe(channel, model or "", p, c)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush_later(), name="usage-flush")
        return p, c, est

    async def _flush_later(self) -> None:
        try:
            await asyncio.sleep(self.flush_every)
        finally:
            self._task = None
        await self.flush()

    async def flush(self) -> None:
        """Write what is noted (never raises: failed rows wait for the next write)."""
        async with self._writing:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            rows = [UsageRow(hour, *dims, *counts) for (hour, dims), counts in batch.items()]  # type: ignore[arg-type]
            try:
                await self.store.add_usage(rows)
            except Exception as e:
                log.warning("usage: writing %d bucket(s) failed (%s); kept for the next write", len(rows), e)
                for key, counts in batch.items():
                    mine = self._pending.setdefault(key, [0, 0, 0, 0])
                    for i, n in enumerate(counts):
                        mine[i] += n
                if self._task is None:
                    self._task = asyncio.get_running_loop().create_task(self._flush_later(), name="usage-flush")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()


# -------------------------------------------------------------------------------------- reports


def report(
    rows: Iterable[UsageRow], by: By = "channel", prices: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Rows grouped by one dimension, largest total first: `{by: name, requests, prompt_tokens,
    completion_tokens, total_tokens, estimated_requests, cost}` (`cost` only with `prices`, and
    None for a group with a model that has no price)."""
    groups: dict[str, dict[str, Any]] = {}
    for r in rows:
        name = getattr(r, by) or "-"
        g = groups.setdefault(
            name,
            {by: name, "requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "estimated_requests": 0, "cost": 0.0},
        )
        g["requests"] += r.requests
        g["prompt_tokens"] += r.prompt
        g["completion_tokens"] += r.completion
        g["estimated_requests"] += r.estimated
        if prices is not None:
            price = prices.get(r.model)
            if price is None or g["cost"] is None:
                g["cost"] = None
            else:
                g["cost"] += (r.prompt * price.prompt + r.completion * price.completion) / 1_000_000
    out = []
    for g in groups.values():
        g["total_tokens"] = g["prompt_tokens"] + g["completion_tokens"]
        if prices is None:
            del g["cost"]
        elif g["cost"] is not None:
            g["cost"] = round(g["cost"], 6)
        out.append(g)
    return sorted(out, key=lambda g: (-g["total_tokens"], str(g[by])))


def series(rows: Iterable[UsageRow], since: float, channel: str | None = None) -> list[tuple[int, int]]:
    """Tokens per hour from `since` to now (hours without use are 0): for the status page."""
    first, last = hour_of(since), hour_of(time.time())
    per = dict.fromkeys(range(first, last + 1, 3600), 0)
    for r in rows:
        if (channel is None or r.channel == channel) and r.hour in per:
            per[r.hour] += r.prompt + r.completion
    return sorted(per.items())


def table(groups: list[dict[str, Any]], by: By) -> str:
    """`switchboard usage` output: aligned columns, a total line."""
    cols = [by, "requests", "prompt", "completion", "total", "estimated"]
    has_cost = any("cost" in g for g in groups)
    if has_cost:
        cols.append("cost")
    lines = [[str(g[by]), *_counts(g), *([_cost(g.get("cost"))] if has_cost else [])] for g in groups]
    summed = ("requests", "prompt_tokens", "completion_tokens", "estimated_requests")
    totals = {k: sum(g[k] for g in groups) for k in summed}
    totals["total_tokens"] = totals["prompt_tokens"] + totals["completion_tokens"]
    total_cost = None if any(g.get("cost") is None for g in groups) else sum(g.get("cost") or 0 for g in groups)
    lines.append(["(total)", *_counts(totals), *([_cost(total_cost)] if has_cost else [])])
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(cols)]
    fmt = [f"{{:<{widths[0]}}}", *(f"{{:>{w}}}" for w in widths[1:])]
    out = ["  ".join(f.format(c) for f, c in zip(fmt, cols, strict=True))]
    out += ["  ".join(f.format(v) for f, v in zip(fmt, line, strict=True)) for line in lines]
    return "\n".join(out)


def _counts(g: Mapping[str, Any]) -> list[str]:
    return [
        f"{g['requests']:,}",
        f"{g['prompt_tokens']:,}",
        f"{g['completion_tokens']:,}",
        f"{g['total_tokens']:,}",
        f"{g['estimated_requests']:,}",
    ]


def _cost(cost: float | None) -> str:
    return "?" if cost is None else f"{cost:,.4f}"


async def query(store: Store, by: str, since: str, prices: Mapping[str, Any] | None) -> dict[str, Any]:
    """What `switchboard usage --json` prints and `GET /admin/usage` answers. ValueError (with a
    message for the caller) for an unknown `by` or a bad `since`."""
    if by not in BY:
        raise ValueError(f"'by' must be one of {', '.join(BY)}, not {by!r}")
    start = parse_since(since)
    groups = report(await store.usage(start), by, prices or None)  # type: ignore[arg-type]
    total = {k: sum(g[k] for g in groups) for k in ("requests", "prompt_tokens", "completion_tokens", "total_tokens")}
    return {
        "since": time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(hour_of(start))),
        "by": by,
        "groups": groups,
        "total": total,
    }
