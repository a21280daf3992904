"""Hold N concurrent slow streams against one target and time every chunk's arrival.

The upstream's `slow` model sends a chunk every 100 ms and writes its send time
(`time.monotonic_ns()`, one clock for every process on the machine) into the chunk text. For
each content chunk after the first we record
  extra delay = (arrival - previous arrival) - (sent - previous sent)
                i.e. inter-chunk arrival vs the upstream's 100 ms schedule as it really ran, so
                the upstream's own lateness is not charged to the proxy;
  transit     = arrival - sent   (the proxy's whole contribution, plus the client's).
A proxy may coalesce chunks that arrive together into one event: every stamp in the text counts.
`gap_extra_held_ms` is the same over the chunks that arrived once every stream was open (no
new connections being set up any more): the "holding" phase alone.
Streams start spread evenly over `--ramp` seconds so the upstream's chunks are not all emitted
at the same instant. Prints one JSON object on stdout, including the peak number of streams
that were open (answered 200 and not yet finished) at the same time.

    python bench/slowclient.py --url http://127.0.0.1:8123/v1/chat/completions \\
        --header 'authorization: Bearer sk-bench' --model slow --streams 1000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp
import orjson


class Tally:
    def __init__(self) -> None:
        self.gaps: list[float] = []
        self.gap_times: list[int] = []  # arrival of each gap's chunk
        self.answered = 0  # streams that got their 200 so far
        self.all_open_at: int | None = None  # when the last stream got its 200: no new connections after
        self.transits: list[float] = []
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.open = 0
        self.peak_open = 0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def stamps_of(line: bytes) -> list[int]:
    """The upstream's send stamps inside a proxied SSE `data:` line (several if coalesced)."""
    if not line.startswith(b"data:"):
        return []
    payload = line[5:].strip()
    if not payload or payload == b"[DONE]":
        return []
    try:
        data = orjson.loads(payload)
        text = data["choices"][0]["delta"].get("content") or ""
        return [int(word) for word in text.split()]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError, AttributeError):
        return []


async def one(
    http: aiohttp.ClientSession,
    args: argparse.Namespace,
    headers: dict[str, str],
    body: bytes,
    tally: Tally,
    delay: float,
    client_timeout: aiohttp.ClientTimeout,
) -> None:
    await asyncio.sleep(delay)
    chunks, done, last, last_sent, opened = 0, False, 0, 0, False
    try:
        async with http.post(args.url, data=body, headers=headers, timeout=client_timeout) as resp:
            if resp.status != 200:
                tally.error(f"HTTP {resp.status}")
                await resp.read()
                return
            opened = True
            tally.answered += 1
            if tally.answered == args.streams:
                tally.all_open_at = time.monotonic_ns()
            tally.open += 1
            tally.peak_open = max(tally.peak_open, tally.open)
            async for raw in resp.content:
                now = time.monotonic_ns()
                line = raw.strip()
                if line == b"data: [DONE]":
                    done = True
                    continue
                for sent in stamps_of(line):
                    if chunks:
                        tally.gaps.append(((now - last) - (sent - last_sent)) / 1e6)
                        tally.gap_times.append(now)
                    tally.transits.append((now - sent) / 1e6)
                    chunks, last, last_sent = chunks + 1, now, sent
    except (TimeoutError, aiohttp.ClientError) as e:
        tally.error(type(e).__name__)
        return
    finally:
        tally.open -= opened
    if not done or chunks != args.chunks:
        tally.error(f"incomplete stream ({chunks} chunks, done={done})")
    else:
        tally.ok += 1


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def run(args: argparse.Namespace) -> dict[str, object]:
    headers = {"content-type": "application/json"}
    for h in args.header:
        name, _, value = h.partition(":")
        headers[name.strip()] = value.strip()
    body = orjson.dumps(
        {"model": args.model, "stream": True, "messages": [{"role": "user", "content": "hold this stream"}]}
    )
    tally = Tally()
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector) as http:
        tasks = [
            asyncio.create_task(one(http, args, headers, body, tally, i * args.ramp / args.streams, timeout))
            for i in range(args.streams)
        ]
        await asyncio.wait(tasks, timeout=args.timeout + args.ramp + 5)
        for t in tasks:
            t.cancel()
    start = tally.all_open_at
    held = [g for g, t in zip(tally.gaps, tally.gap_times, strict=True) if start is not None and t >= start]
    return {
        "streams": args.streams,
        "ok": tally.ok,
        "peak_open": tally.peak_open,
        "errors": sum(tally.errors.values()),
        "error_kinds": tally.errors,
        "seconds": round(time.monotonic() - started, 2),
        "chunks": len(tally.transits),
        "gap_extra_ms": {p: percentile(tally.gaps, float(p)) for p in ("50", "90", "99", "100")},
        "gap_extra_held_ms": {p: percentile(held, float(p)) for p in ("50", "99")} if held else None,
        "transit_ms": {p: percentile(tally.transits, float(p)) for p in ("50", "90", "99", "100")},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--model", default="slow")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--chunks", type=int, default=50, help="content chunks per stream (upstream's slow model)")
    parser.add_argument("--ramp", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
