"""Hot reload under load: 10 reloads during steady OpenAI traffic and Slack webhook traffic.

Switchboard (`python -m proxy serve`, bench/config.yaml plus an admin key and the Slack platform)
runs against the bench's fake upstream and fake Slack API. For `BENCH_RELOAD_SECONDS` (30) this
script keeps `BENCH_RELOAD_CLIENTS` (16) OpenAI clients busy (half streaming, half not; every
response's status and, for streams, its `[DONE]` checked) plus `BENCH_RELOAD_SLOW_CLIENTS` (4)
streaming the `slow` model (5 s a stream, so every reload has streams in flight), and sends
signed Slack events at `BENCH_RELOAD_EVENTS` per second (10), answered by the `slow` model too (so
~50 Slack answers are being written at any moment); every `BENCH_RELOAD_RETRY_EVERY`-th (5th)
event is delivered again a second later as Slack's retry (`X-Slack-Retry-Num: 1`). Meanwhile it
reloads `BENCH_RELOADS` (10) times at even intervals, each a real change, in turn: the channels'
prompts; both provider blocks (so the providers are rebuilt and the old ones retired once their
answers finish); the limits; the Slack platform block (so the adapter is rebuilt and the old one
retired) — through `POST /admin/reload`, every third one by SIGHUP instead (its result read
from /metrics, what it changed from the server's log line). Then it waits for every event's
answer and counts, from the fake Slack's per-thread records, events answered once, never, or
more than once (a second final answer or a second placeholder).

Reported (bench/results/reload.json, the "Hot reload under load" section of BENCHMARKS.md and the
`reload` key of BENCHMARKS.json): requests sent / failed, events sent / lost / doubled, how many
events were acknowledged during a reload and how many answers were being written across one,
every reload's result and time, and the OpenAI latency p50/p99 of requests that overlapped a
reload against those that did not (a ratio within this run; not asserted: these machines are
shared).

    cd bench && ../.venv/bin/python reload.py      # or: make -C bench reload
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from procs import Procs, free_port, wait_ready
from run import start_fake
from targets import default_paths, switchboard_config
from webhook import signed_event

SECONDS = float(os.environ.get("BENCH_RELOAD_SECONDS", "30"))
CLIENTS = int(os.environ.get("BENCH_RELOAD_CLIENTS", "16"))
SLOW_CLIENTS = int(os.environ.get("BENCH_RELOAD_SLOW_CLIENTS", "4"))
#: 10 events/s answered in ~5 s keeps ~50 generations running, under the shipped
#: `server.max_concurrent_generations` (64): a steady state, not a growing queue.
EVENTS_PER_SECOND = float(os.environ.get("BENCH_RELOAD_EVENTS", "10"))
RETRY_EVERY = int(os.environ.get("BENCH_RELOAD_RETRY_EVERY", "5"))
RELOADS = int(os.environ.get("BENCH_RELOADS", "10"))
ADMIN = "bench-admin-key"
API_KEY = "sk-bench"
SECTION = "## Hot reload under load"
#: A reload's window for "overlapping a reload": its call, plus this long after its result.
AFTER = 0.5


def log(msg: str) -> None:
    print(f"[reload {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def change(config: dict[str, Any], i: int) -> str:
    """The i-th reload's edit of the config (in place); what it changed."""
    kind = i % 4
    if kind == 0:
        for ch in config["channels"]:
            ch["prompt"] = f"You are the bench assistant, version {i}."
        return "prompts"
    if kind == 1:
        for provider in config["providers"].values():
            provider["read_timeout"] = 120 + i  # rebuilt; the old ones retire when their answers end
        return "providers (rebuilt)"
    if kind == 2:
        config["limits"] = {"keys": {"*": {"rpm": 1_000_000 + i}}}
        return "limits"
    config["platforms"]["slack"]["update_interval"] = 1.0 + i / 100  # the adapter is rebuilt
    return "platform slack (rebuilt)"


class Load:
    def __init__(self, base: str) -> None:
        self.base = base
        #: kind (json, sse, slow), started (monotonic), seconds, ok, why
        self.requests: list[tuple[str, float, float, bool, str]] = []
        #: per event acknowledged: thread ts, sent and acknowledged (wall clock)
        self.events: list[tuple[str, float, float]] = []
        self.event_failures: list[str] = []
        self.retries = 0
        self.stop = asyncio.Event()

    async def openai_client(self, http: aiohttp.ClientSession, n: int, kind: str) -> None:
        stream = kind != "json"
        model = "slow" if kind == "slow" else "bench"
        body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": f"hi {n}"}], "stream": stream})
        headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
        while not self.stop.is_set():
            started = time.monotonic()
            ok, why = False, ""
            try:
                async with http.post(f"{self.base}/v1/chat/completions", data=body, headers=headers) as r:
                    data = await r.read()
                    if r.status != 200:
                        why = f"HTTP {r.status}: {data[:200]!r}"
                    elif stream and not data.rstrip().endswith(b"data: [DONE]"):
                        why = f"stream did not end with [DONE]: {data[-200:]!r}"
                    elif not stream and b'"choices"' not in data:
                        why = f"no choices: {data[:200]!r}"
                    else:
                        ok = True
            except (aiohttp.ClientError, TimeoutError) as e:
                why = f"{type(e).__name__}: {e}"
            self.requests.append((kind, started, time.monotonic() - started, ok, why))

    async def deliver(self, http: aiohttp.ClientSession, body: bytes, headers: dict[str, str]) -> bool:
        try:
            async with http.post(f"{self.base}/hooks/slack", data=body, headers=headers) as r:
                await r.read()
                if r.status == 200:
                    return True
                self.event_failures.append(f"HTTP {r.status}")
        except (aiohttp.ClientError, TimeoutError) as e:
            self.event_failures.append(f"{type(e).__name__}: {e}")
        return False

    async def retry(self, http: aiohttp.ClientSession, body: bytes, headers: dict[str, str]) -> None:
        """Slack's retry of an event: the same body a second later, `X-Slack-Retry-Num: 1`."""
        await asyncio.sleep(1.0)
        retry = {**headers, "x-slack-retry-num": "1", "x-slack-retry-reason": "http_timeout"}
        if await self.deliver(http, body, retry):
            self.retries += 1

    async def slack_events(self, http: aiohttp.ClientSession) -> None:
        n, interval = 0, 1 / EVENTS_PER_SECOND
        next_at = time.monotonic()
        retries: set[asyncio.Task[None]] = set()
        while not self.stop.is_set():
            n += 1
            stamp, signature, body = signed_event(n, int(time.time()))
            thread = orjson.loads(body)["event"]["ts"]
            headers = {
                "content-type": "application/json",
                "x-slack-request-timestamp": stamp,
                "x-slack-signature": signature,
            }
            sent = time.time()
            if await self.deliver(http, body, headers):
                self.events.append((thread, sent, time.time()))
                if RETRY_EVERY and n % RETRY_EVERY == 0:
                    task = asyncio.create_task(self.retry(http, body, headers))
                    retries.add(task)
                    task.add_done_callback(retries.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*retries)


async def reloader(base: str, config_path: Path, config: dict[str, Any], pid: int) -> list[dict[str, Any]]:
    done: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        for i in range(RELOADS):
            await asyncio.sleep(SECONDS / (RELOADS + 1))
            what = change(config, i)
            await asyncio.to_thread(config_path.write_text, yaml.safe_dump(config, sort_keys=False))
            started, wall = time.monotonic(), time.time()
            if i % 3 == 2:  # SIGHUP: the result is in /metrics
                before = await reload_count(http, base)
                os.kill(pid, signal.SIGHUP)
                while await reload_count(http, base) == before and time.monotonic() - started < 30:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                after = await reload_count(http, base)
                result: dict[str, Any] = {"trigger": "sighup", "ok": after > before}
            else:
                async with http.post(f"{base}/admin/reload", headers={"authorization": f"Bearer {ADMIN}"}) as r:
                    answer = orjson.loads(await r.read())
                ok = r.status == 200 and answer.get("status") == "reloaded"
                result = {"trigger": "admin", "ok": ok, "changed": answer.get("changed")}
            seconds = time.monotonic() - started
            result |= {"what": what, "started": started, "wall": (wall, wall + seconds), "seconds": round(seconds, 4)}
            done.append(result)
            log(f"reload {i + 1}: {what} via {result['trigger']}: {'ok' if result['ok'] else 'FAILED'} "
                f"in {result['seconds'] * 1000:.0f} ms")  # fmt: skip
    return done


async def reload_count(http: aiohttp.ClientSession, base: str) -> float:
    async with http.get(f"{base}/metrics") as r:
        text = (await r.read()).decode()
    found = re.search(r'switchboard_config_reloads_total\{outcome="changed",trigger="sighup"\} ([0-9.]+)', text)
    return float(found.group(1)) if found else 0.0


def sighup_changes(log_path: Path, reloads: list[dict[str, Any]]) -> None:
    """What each SIGHUP reload changed, from the server's "config reloaded (sighup): ..." lines."""
    lines = re.findall(r"config reloaded \(sighup\): (.*)", log_path.read_text(errors="replace"))
    for r, line in zip([r for r in reloads if r["trigger"] == "sighup"], lines, strict=False):
        r["changed"] = line.split("; needs a restart")[0].split(", ")


def threads(slack_api: str) -> dict[str, dict[str, Any]]:
    url = slack_api.rstrip("/").rsplit("/api", 1)[0] + "/stats/threads"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return dict(orjson.loads(resp.read()))


def quantiles(values: list[float]) -> dict[str, float | None]:
    if len(values) < 2:
        return {"n": len(values), "p50_ms": None, "p99_ms": None}
    qs = statistics.quantiles(values, n=100)
    return {"n": len(values), "p50_ms": round(qs[49] * 1000, 2), "p99_ms": round(qs[98] * 1000, 2)}


def seconds_quantiles(values: list[float]) -> dict[str, float | None]:
    q = quantiles(values)
    return {
        "n": q["n"],
        "p50_s": q["p50_ms"] and round(q["p50_ms"] / 1000, 2),
        "p99_s": q["p99_ms"] and round(q["p99_ms"] / 1000, 2),
    }


async def drive(base: str, config_path: Path, config: dict[str, Any], pid: int, slack_api: str) -> dict[str, Any]:
    load = Load(base)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        kinds = ["sse" if n % 2 else "json" for n in range(CLIENTS)] + ["slow"] * SLOW_CLIENTS
        workers = [asyncio.create_task(load.openai_client(http, n, kind)) for n, kind in enumerate(kinds)]
        workers.append(asyncio.create_task(load.slack_events(http)))
        reloads = await reloader(base, config_path, config, pid)
        await asyncio.sleep(SECONDS / (RELOADS + 1))
        load.stop.set()
        await asyncio.gather(*workers)
    sent = [t for t, _, _ in load.events]
    deadline = time.monotonic() + 60
    seen: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        seen = await asyncio.to_thread(threads, slack_api)
        if all(seen.get(t, {}).get("finals", 0) >= 1 for t in sent):
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(2.0)  # anything doubled would have arrived by now
    seen = await asyncio.to_thread(threads, slack_api)
    return counts(load, reloads, seen)


def counts(load: Load, reloads: list[dict[str, Any]], seen: dict[str, dict[str, Any]]) -> dict[str, Any]:
    sent = [t for t, _, _ in load.events]
    finals = [seen.get(t, {}).get("finals", 0) for t in sent]
    placeholders = [seen.get(t, {}).get("posted", 0) for t in sent]
    walls = [r["wall"] for r in reloads]
    acked_during = sum(1 for _, a, b in load.events if any(s <= b and a <= e for s, e in walls))
    across, answer_times = 0, []  # across: placeholder posted before a reload, final answer after it
    for t in sent:
        rec = seen.get(t, {})
        if rec.get("posted_at") and rec.get("final_at"):
            across += any(rec["posted_at"] < s and e < rec["final_at"] for s, e in walls)
            answer_times.append(rec["final_at"] - rec["posted_at"])
    windows = [(r["started"], r["started"] + r["seconds"] + AFTER) for r in reloads]

    def overlaps(t: float, s: float) -> bool:
        return any(a <= t + s and t <= b for a, b in windows)

    fast = [(t, s) for kind, t, s, ok, _ in load.requests if ok and kind != "slow"]
    during = [s for t, s in fast if overlaps(t, s)]
    outside = [s for t, s in fast if not overlaps(t, s)]
    failed = [f"{kind}: {why}" for kind, _, _, ok, why in load.requests if not ok]
    slow = [ok for kind, _, _, ok, _ in load.requests if kind == "slow"]
    q_during, q_outside = quantiles(during), quantiles(outside)
    ratio = None
    if q_during["p50_ms"] and q_outside["p50_ms"]:
        ratio = {
            "p50": round(q_during["p50_ms"] / q_outside["p50_ms"], 2),
            "p99": round((q_during["p99_ms"] or 0) / (q_outside["p99_ms"] or 1), 2),
        }
    return {
        "seconds": SECONDS,
        "clients": CLIENTS,
        "slow_clients": SLOW_CLIENTS,
        "events_per_second": EVENTS_PER_SECOND,
        "openai": {
            "sent": len(load.requests),
            "ok": len(load.requests) - len(failed),
            "failed": len(failed),
            "slow_streams": len(slow),
            "slow_streams_failed": slow.count(False),
            "failures": failed[:10],
        },
        "slack": {
            "sent": len(load.events) + len(load.event_failures),
            "acknowledged": len(load.events),
            "retries_delivered": load.retries,
            "refused": load.event_failures[:10],
            "answer_seconds": seconds_quantiles(answer_times),
            "acknowledged_during_a_reload": acked_during,
            "answers_across_a_reload": across,
            "answered_once": sum(1 for f, p in zip(finals, placeholders, strict=True) if f == 1 and p == 1),
            "lost": sum(1 for f in finals if f == 0),
            "doubled": sum(1 for f, p in zip(finals, placeholders, strict=True) if f > 1 or p > 1),
        },
        "reloads": [{k: v for k, v in r.items() if k not in ("started", "wall")} for r in reloads],
        "latency_during_reloads": q_during,
        "latency_otherwise": q_outside,
        "ratio_during_to_otherwise": ratio,
    }


def section(result: dict[str, Any]) -> str:
    o, s, rl = result["openai"], result["slack"], result["reloads"]
    ok = sum(1 for r in rl if r["ok"])
    times = sorted(r["seconds"] * 1000 for r in rl)
    d, n = result["latency_during_reloads"], result["latency_otherwise"]
    kinds = ", ".join(dict.fromkeys(r["what"] for r in rl))
    lines = [
        SECTION,
        "",
        f"`make -C bench reload` ({time.strftime('%Y-%m-%d')}): {len(rl)} reloads during {result['seconds']:.0f} s "
        f"of steady traffic: {result['clients']} OpenAI clients (half streaming) and {result['slow_clients']} "
        f"streaming 5 s answers; signed Slack events at {result['events_per_second']:.0f}/s answered in 5 s "
        f"(~{result['events_per_second'] * 5:.0f} answers being written at any moment), every {RETRY_EVERY}th "
        f"delivered again as Slack's retry. Each reload is a real change, in turn: {kinds}; every third by "
        "SIGHUP, the others by `POST /admin/reload`.",
        "",
        "| | result |",
        "|---|---|",
        f"| OpenAI requests | {o['sent']:,} sent, **{o['failed']} failed** "
        f"(of them {o['slow_streams']} slow streams, {o['slow_streams_failed']} failed) |",
        f"| Slack events | {s['sent']:,} sent, {s['acknowledged']:,} acknowledged 200 "
        f"(+{s['retries_delivered']} retries), **{s['lost']} lost, {s['doubled']} doubled** "
        f"({s['answered_once']:,} answered exactly once) |",
        f"| Slack events across reloads | {s['acknowledged_during_a_reload']} acknowledged while a reload ran; "
        f"{s['answers_across_a_reload']} answers were being written while one was applied "
        f"(placeholder → final answer p50 {s['answer_seconds']['p50_s']} s, p99 {s['answer_seconds']['p99_s']} s) |",
        f"| reloads | {ok}/{len(rl)} applied; time from call to result {times[0]:.0f}–{times[-1]:.0f} ms "
        f"(median {statistics.median(times):.0f}) |",
        f"| OpenAI latency overlapping a reload (+{AFTER} s) | p50 {d['p50_ms']} ms, p99 {d['p99_ms']} ms "
        f"(n={d['n']}) |",
        f"| OpenAI latency otherwise | p50 {n['p50_ms']} ms, p99 {n['p99_ms']} ms (n={n['n']}) |",
        "",
        "Latency covers the fast requests only (not the 5 s streams), as a ratio within this run "
        f"(during ÷ otherwise: {result['ratio_during_to_otherwise']}); not asserted, the machine is shared. "
        "Raw numbers: the `reload` key of BENCHMARKS.json.",
        "",
    ]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    doc = path.read_text() if path.exists() else ""
    if SECTION in doc:
        head, rest = doc.split(SECTION, 1)
        tail = rest[rest.find("\n## ") + 1 :] if "\n## " in rest else ""
        doc = head + text + ("\n" + tail if tail else "")
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    path.write_text(doc)


def write_json(path: Path, result: dict[str, Any]) -> None:
    """The `reload` key of BENCHMARKS.json (bench/run.py writes the rest)."""
    doc = orjson.loads(path.read_bytes()) if path.exists() else {}
    doc["reload"] = result
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))


def reload_config(paths: Any, port: int, upstream: str, slack_api: str) -> tuple[Path, dict[str, Any]]:
    """The bench config plus an admin key, with the Slack channel answered by the slow model."""
    config = yaml.safe_load(switchboard_config(paths, port, upstream, slack_api).read_text())
    config["admin"] = {"keys": [ADMIN]}
    config["server"].pop("log_level", None)  # the shipped default
    for ch in config["channels"]:
        if ch["name"] == "slack":
            ch["providers"] = ["up-slow"]
    path = paths.out / "switchboard-reload.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, config


def main() -> int:
    paths = default_paths()
    procs = Procs(paths.out / "logs")
    try:
        _, upstream_port = start_fake(procs, paths, "upstream", "upstream.py")
        _, slack_port = start_fake(procs, paths, "fake-slack", "fake_slack.py")
        upstream, slack_api = f"http://127.0.0.1:{upstream_port}/v1", f"http://127.0.0.1:{slack_port}/api"
        port = free_port()
        config_path, config = reload_config(paths, port, upstream, slack_api)
        base = f"http://127.0.0.1:{port}"
        proc = procs.start(
            "switchboard-reload", [paths.python, "-m", "proxy", "serve", "--config", str(config_path)], cwd=paths.root
        )

        def ready() -> bool:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as r:
                return bool(r.status == 200)

        wait_ready(proc, ready, 60)
        log(f"switchboard ready on {base}; {SECONDS:.0f} s of traffic with {RELOADS} reloads")
        result = asyncio.run(drive(base, config_path, config, proc.pid, slack_api))
    finally:
        procs.close()
    sighup_changes(proc.log, result["reloads"])
    (paths.out / "reload.json").write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    text = section(result)
    print(text)
    report = paths.out / "BENCHMARKS.md" if os.environ.get("BENCH_OUT") else paths.root / "BENCHMARKS.md"
    write_section(report, text)
    write_json(report.with_suffix(".json"), result)
    bad = result["openai"]["failed"] or result["slack"]["lost"] or result["slack"]["doubled"]
    bad = bad or not all(r["ok"] for r in result["reloads"]) or result["slack"]["refused"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
