"""Hot reload under load: 10 reloads during steady OpenAI traffic and Slack webhook traffic.

Switchboard (`python -m proxy serve`, bench/config.yaml plus an admin key and the Slack platform)
runs against the bench's fake upstream and fake Slack API. For `BENCH_RELOAD_SECONDS` (30) this
script keeps `BENCH_RELOAD_CLIENTS` (16) OpenAI clients busy (half streaming, half not; every
response's status and, for streams, its `[DONE]` checked) and sends signed Slack events at
`BENCH_RELOAD_EVENTS` per second (20). Meanwhile it reloads `BENCH_RELOADS` (10) times at even
intervals, each a real change — the channel's prompt; the provider block (so the provider is
rebuilt and the old one retired); the limits — through `POST /admin/reload`, every third one by
SIGHUP instead (its result read from /metrics). Then it waits for every event's answer and
counts, from the fake Slack's per-thread records, events answered once, never, or more than once.

Reported (bench/results/reload.json, and the "Hot reload under load" section of BENCHMARKS.md):
requests sent / failed, events sent / lost / doubled, every reload's result and time, and the
OpenAI latency p50/p99 of requests that overlapped a reload against those that did not (a ratio
within this run; not asserted: these machines are shared).

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
from procs import Procs, wait_ready
from run import start_fake
from targets import default_paths, switchboard_config
from webhook import signed_event

SECONDS = float(os.environ.get("BENCH_RELOAD_SECONDS", "30"))
CLIENTS = int(os.environ.get("BENCH_RELOAD_CLIENTS", "16"))
EVENTS_PER_SECOND = float(os.environ.get("BENCH_RELOAD_EVENTS", "20"))
RELOADS = int(os.environ.get("BENCH_RELOADS", "10"))
ADMIN = "bench-admin-key"
API_KEY = "sk-bench"
SECTION = "## Hot reload under load"


def log(msg: str) -> None:
    print(f"[reload {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def change(config: dict[str, Any], i: int) -> str:
    """The i-th reload's edit of the config (in place); what it changed."""
    kind = i % 3
    if kind == 0:
        for ch in config["channels"]:
            ch["prompt"] = f"You are the bench assistant, version {i}."
        return "prompts"
    if kind == 1:
        config["providers"]["up"]["read_timeout"] = 120 + i  # the provider is rebuilt
        return "provider up (rebuilt)"
    config["limits"] = {"keys": {"*": {"rpm": 1_000_000 + i}}}
    return "limits"


class Load:
    def __init__(self, base: str) -> None:
        self.base = base
        self.requests: list[tuple[float, float, bool, str]] = []  # started, seconds, ok, why
        self.events: list[str] = []  # the thread ts of each event sent
        self.event_failures: list[str] = []
        self.stop = asyncio.Event()

    async def openai_client(self, http: aiohttp.ClientSession, n: int) -> None:
        stream = n % 2 == 1
        body = orjson.dumps(
            {"model": "bench", "messages": [{"role": "user", "content": f"hi {n}"}], "stream": stream}
        )
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
            self.requests.append((started, time.monotonic() - started, ok, why))

    async def slack_events(self, http: aiohttp.ClientSession) -> None:
        n, interval = 0, 1 / EVENTS_PER_SECOND
        next_at = time.monotonic()
        while not self.stop.is_set():
            n += 1
            stamp, signature, body = signed_event(n, int(time.time()))
            thread = orjson.loads(body)["event"]["ts"]
            headers = {
                "content-type": "application/json",
                "x-slack-request-timestamp": stamp,
                "x-slack-signature": signature,
            }
            try:
                async with http.post(f"{self.base}/hooks/slack", data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        self.event_failures.append(f"HTTP {r.status}")
                    else:
                        self.events.append(thread)
            except (aiohttp.ClientError, TimeoutError) as e:
                self.event_failures.append(f"{type(e).__name__}: {e}")
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def reloader(base: str, config_path: Path, config: dict[str, Any], pid: int) -> list[dict[str, Any]]:
    done: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        for i in range(RELOADS):
            await asyncio.sleep(SECONDS / (RELOADS + 1))
            what = change(config, i)
            await asyncio.to_thread(config_path.write_text, yaml.safe_dump(config, sort_keys=False))
            started = time.monotonic()
            if i % 3 == 2:  # SIGHUP: the result is in /metrics
                before = await reload_count(http, base)
                os.kill(pid, signal.SIGHUP)
                while await reload_count(http, base) == before and time.monotonic() - started < 30:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                after = await reload_count(http, base)
                ok = after > before
                result: dict[str, Any] = {"trigger": "sighup", "ok": ok}
            else:
                async with http.post(
                    f"{base}/admin/reload", headers={"authorization": f"Bearer {ADMIN}"}
                ) as r:
                    answer = orjson.loads(await r.read())
                result = {"trigger": "admin", "ok": r.status == 200, "changed": answer.get("changed")}
            result |= {"what": what, "started": started, "seconds": round(time.monotonic() - started, 4)}
            done.append(result)
            log(f"reload {i + 1}: {what} via {result['trigger']}: {'ok' if result['ok'] else 'FAILED'} "
                f"in {result['seconds'] * 1000:.0f} ms")  # fmt: skip
    return done


async def reload_count(http: aiohttp.ClientSession, base: str) -> float:
    async with http.get(f"{base}/metrics") as r:
        text = (await r.read()).decode()
    found = re.search(r'switchboard_config_reloads_total\{outcome="changed",trigger="sighup"\} ([0-9.]+)', text)
    return float(found.group(1)) if found else 0.0


def threads(slack_api: str) -> dict[str, dict[str, int]]:
    url = slack_api.rstrip("/").rsplit("/api", 1)[0] + "/stats/threads"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return dict(orjson.loads(resp.read()))


def quantiles(values: list[float]) -> dict[str, float | None]:
    if len(values) < 2:
        return {"n": len(values), "p50_ms": None, "p99_ms": None}
    qs = statistics.quantiles(values, n=100)
    return {"n": len(values), "p50_ms": round(qs[49] * 1000, 2), "p99_ms": round(qs[98] * 1000, 2)}


async def drive(base: str, config_path: Path, config: dict[str, Any], pid: int, slack_api: str) -> dict[str, Any]:
    load = Load(base)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        workers = [asyncio.create_task(load.openai_client(http, n)) for n in range(CLIENTS)]
        workers.append(asyncio.create_task(load.slack_events(http)))
        reloads = await reloader(base, config_path, config, pid)
        await asyncio.sleep(SECONDS / (RELOADS + 1))
        load.stop.set()
        await asyncio.gather(*workers)
    deadline = time.monotonic() + 60
    seen: dict[str, dict[str, int]] = {}
    while time.monotonic() < deadline:
        seen = threads(slack_api)
        if all(seen.get(t, {}).get("finals", 0) >= 1 for t in load.events):
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)  # anything doubled would have arrived by now
    seen = threads(slack_api)
    finals = [seen.get(t, {}).get("finals", 0) for t in load.events]
    windows = [(r["started"], r["started"] + r["seconds"] + 0.5) for r in reloads]
    during = [s for t, s, ok, _ in load.requests if ok and any(a <= t + s and t <= b for a, b in windows)]
    outside = [s for t, s, ok, _ in load.requests if ok and not any(a <= t + s and t <= b for a, b in windows)]
    failed = [why for _, _, ok, why in load.requests if not ok]
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
        "openai": {
            "sent": len(load.requests),
            "ok": len(load.requests) - len(failed),
            "failed": len(failed),
            "failures": failed[:10],
        },
        "slack": {
            "sent": len(load.events) + len(load.event_failures),
            "acknowledged": len(load.events),
            "refused": load.event_failures[:10],
            "answered_once": sum(1 for f in finals if f == 1),
            "lost": sum(1 for f in finals if f == 0),
            "doubled": sum(1 for f in finals if f > 1),
        },
        "reloads": [{k: v for k, v in r.items() if k != "started"} for r in reloads],
        "latency_during_reloads": q_during,
        "latency_otherwise": q_outside,
        "ratio_during_to_otherwise": ratio,
    }


def section(result: dict[str, Any]) -> str:
    o, s, rl = result["openai"], result["slack"], result["reloads"]
    ok = sum(1 for r in rl if r["ok"])
    times = sorted(r["seconds"] * 1000 for r in rl)
    d, n = result["latency_during_reloads"], result["latency_otherwise"]
    lines = [
        SECTION,
        "",
        f"`make -C bench reload` ({time.strftime('%Y-%m-%d')}): {RELOADS} reloads during {result['seconds']:.0f} s "
        f"of steady traffic ({result['clients']} OpenAI clients, half streaming; Slack events at "
        f"{EVENTS_PER_SECOND:.0f}/s), each a real change (prompts; the provider block, so the provider is rebuilt; "
        "limits), every third by SIGHUP, the others by `POST /admin/reload`.",
        "",
        "| | result |",
        "|---|---|",
        f"| OpenAI requests | {o['sent']:,} sent, **{o['failed']} failed** |",
        f"| Slack events | {s['sent']:,} sent, {s['acknowledged']:,} acknowledged 200, "
        f"**{s['lost']} lost, {s['doubled']} doubled** ({s['answered_once']:,} answered exactly once) |",
        f"| reloads | {ok}/{len(rl)} applied; time to apply {times[0]:.0f}–{times[-1]:.0f} ms |",
        f"| OpenAI latency overlapping a reload | p50 {d['p50_ms']} ms, p99 {d['p99_ms']} ms (n={d['n']}) |",
        f"| OpenAI latency otherwise | p50 {n['p50_ms']} ms, p99 {n['p99_ms']} ms (n={n['n']}) |",
        "",
        "Latency is a ratio within this run (during ÷ otherwise: "
        f"{result['ratio_during_to_otherwise']}); the machine is shared, so absolute numbers wander.",
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


def main() -> int:
    paths = default_paths()
    procs = Procs(paths.out / "logs")
    try:
        _, upstream_port = start_fake(procs, paths, "upstream", "upstream.py")
        _, slack_port = start_fake(procs, paths, "fake-slack", "fake_slack.py")
        upstream, slack_api = f"http://127.0.0.1:{upstream_port}/v1", f"http://127.0.0.1:{slack_port}/api"
        from procs import free_port

        port = free_port()
        path = switchboard_config(paths, port, upstream, slack_api)
        config = yaml.safe_load(path.read_text())
        config["admin"] = {"keys": [ADMIN]}
        config["server"].pop("log_level", None)  # the shipped default
        config_path = paths.out / "switchboard-reload.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
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
    (paths.out / "reload.json").write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    text = section(result)
    print(text)
    target = paths.out / "BENCHMARKS.md" if os.environ.get("BENCH_OUT") else paths.root / "BENCHMARKS.md"
    write_section(target, text)
    bad = result["openai"]["failed"] or result["slack"]["lost"] or result["slack"]["doubled"]
    bad = bad or not all(r["ok"] for r in result["reloads"]) or result["slack"]["refused"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
