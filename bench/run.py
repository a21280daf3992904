"""`make bench`: Switchboard against the direct upstream, a bare passthrough and the peers.

Every target runs in its own process on 127.0.0.1 against one fake upstream (bench/upstream.py).
wrk drives them A B A B ... in short interleaved rounds, so drift on a shared machine hits all
alike; while one target is measured the others are paused (SIGSTOP) so their background work
cannot steal the CPU. Then: 1,000 slow streams per target, the Slack webhook burst (when the
adapter exists) and a py-spy profile of Switchboard. The summary with the pass/fail targets goes
to BENCHMARKS.md, the raw numbers to BENCHMARKS.json beside it and to bench/results/latest.json.

Knobs (environment): BENCH_ROUNDS (3), BENCH_SECONDS (3), BENCH_SLOW_STREAMS (1000),
BENCH_ONLY (comma-separated target names), BENCH_PROFILE (seconds of py-spy per mode, 6; 0 = off),
BENCH_OUT (bench/results; BENCHMARKS.md is then written there too, not at the top level),
BENCH_BASELINE (the path of another checkout, e.g. `git worktree add /tmp/old <commit>`: adds a
`switchboard-baseline` cell serving it with the logs-off config, for old-vs-new runs).
"""

from __future__ import annotations

import os
import resource
import signal
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson

import environment
import hotpath
import summary
import webhook
from loads import chat_load, slow_streams
from procs import (
    Proc,
    Procs,
    foreign_load_generators,
    post_ok,
    read_ready_line,
    tree_cpu_seconds,
    tree_rss_mb,
    wait_ready,
)
from targets import Paths, Target, build, default_paths, missing_peers, slack_available

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
SLOW_STREAMS = int(os.environ.get("BENCH_SLOW_STREAMS", "1000"))
ONLY = [n for n in os.environ.get("BENCH_ONLY", "").split(",") if n]
PROFILE_SECONDS = float(os.environ.get("BENCH_PROFILE", "6"))
SCENARIOS = (("json", 1), ("json", 50), ("sse", 1), ("sse", 50))
#: Targets measured in the rounds only (the limits cell is about the cost per request).
NO_SLOW_STREAMS = frozenset(
    {"switchboard-limits", "switchboard-logs-off", "switchboard-baseline", "switchboard-anthropic"}
)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def start_fake(procs: Procs, paths: Paths, name: str, script: str) -> tuple[Proc, int]:
    import subprocess

    proc = procs.start(name, [paths.python, str(paths.bench / script), "--port", "0"], stdout=subprocess.PIPE)
    line = read_ready_line(proc, timeout=30)
    return proc, int(line.split()[1])


class Bench:
    def __init__(self, paths: Paths, procs: Procs) -> None:
        self.paths, self.procs = paths, procs
        self.live: dict[str, tuple[Target, Proc]] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.upstream: Proc | None = None
        self.foreign: set[str] = set()  # other people's wrk runs seen while we measured

    def isolate(self, measured: str | None) -> None:
        """Resume `measured` (and the upstream), pause every other target; None resumes all."""
        for name, (_, proc) in self.live.items():
            if proc is not self.upstream:
                proc.pause(measured is not None and name != measured)
        if measured is not None:
            self.foreign.update(foreign_load_generators())
            time.sleep(0.2)

    def start_target(self, target: Target) -> None:
        res = self.results.setdefault(target.name, {})
        try:
            if target.name == "direct":
                assert self.upstream is not None
                proc = self.upstream
            else:
                proc = self.procs.start(target.name, target.argv, env=target.env, cwd=target.cwd)
            body, headers = target.body("json"), target.request_headers()
            ready = wait_ready(proc, lambda: post_ok(target.url, body, headers), target.ready_timeout)
            res["ready_s"] = round(ready, 3) if target.name != "direct" else None
            time.sleep(1.0)
            res["idle_rss_mb"] = round(tree_rss_mb(proc.pid), 1)
            self.live[target.name] = (target, proc)
            log(f"{target.name}: ready in {ready:.2f} s, idle RSS {res['idle_rss_mb']} MB")
            if proc is not self.upstream:
                proc.pause(True)
        except Exception as e:
            res["failed"] = f"did not start: {e}"[:600]
            log(f"{target.name}: {res['failed']}")

    def rounds(self) -> None:
        runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        for name, (target, _) in self.live.items():  # warm-up: connection pools, caches, JITs
            self.isolate(name)
            for mode in ("json", "sse"):
                chat_load(self.paths, target, mode, 50, 1)
        for r in range(ROUNDS):
            for mode, conns in SCENARIOS:
                for name, (target, proc) in self.live.items():
                    self.isolate(name)
                    cpu = tree_cpu_seconds(proc.pid)
                    run = chat_load(self.paths, target, mode, conns, SECONDS)
                    run["cpu_s"] = tree_cpu_seconds(proc.pid) - cpu  # the target's own CPU (the upstream's for direct)
                    runs.setdefault((name, mode, conns), []).append(run)
            log(f"round {r + 1}/{ROUNDS} done")
        for (name, mode, conns), xs in runs.items():
            self.results[name][f"{mode}_c{conns}"] = aggregate(xs)

    def slow(self) -> None:
        for name, (target, proc) in self.live.items():
            if name in NO_SLOW_STREAMS:
                continue
            self.isolate(name)
            log(f"{name}: {SLOW_STREAMS} slow streams")
            self.results[name]["slow_streams"] = res = slow_streams(self.paths, target, proc, SLOW_STREAMS, 90)
            log(f"{name}: {res.get('ok')} ok, {res.get('errors')} errors, peak RSS {res.get('peak_rss_mb')} MB")

    def measure(self, key: str, step: Callable[[], dict[str, Any]]) -> None:
        """Run one Switchboard-only measurement into results["switchboard"][key]."""
        try:
            self.results["switchboard"][key] = step()
        except Exception as e:
            log(f"{key} failed: {type(e).__name__}: {e}")
            self.results["switchboard"][key] = {"failed": f"{type(e).__name__}: {e}"[:600]}

    def guarded(self, what: str, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as e:  # one failing phase must not lose the others' numbers
            log(f"{what} failed: {type(e).__name__}: {e}")
            self.results.setdefault("_errors", {})[what] = f"{type(e).__name__}: {e}"[:600]


def aggregate(xs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [x for x in xs if "failed" not in x]
    if not ok:
        return {"failed": xs[0].get("failed") if xs else "no runs"}
    seconds = sum(x["seconds"] for x in ok)
    requests = sum(x["requests"] for x in ok)
    return {
        "rps": round(sum(x["requests"] for x in ok) / seconds, 1) if seconds else 0.0,
        #: CPU time of the target's processes per answered request: steadier than req/s on a
        #: shared machine (it does not count the time the target waited for a core).
        "cpu_us_per_request": round(sum(x.get("cpu_s", 0.0) for x in ok) / requests * 1e6, 1) if requests else None,
        "p50_ms": round(statistics.median(x["p50_ms"] for x in ok), 3),
        "p99_ms": round(statistics.median(x["p99_ms"] for x in ok), 3),
        "p99_max_ms": round(max(x["p99_ms"] for x in ok), 3),
        "errors": sum(x["errors"] for x in ok),
        "requests": sum(x["requests"] for x in ok),
        "seconds": round(seconds, 2),
        "rounds": [{k: x[k] for k in ("rps", "p50_ms", "p99_ms", "errors")} for x in ok],
        **({"failed_rounds": len(xs) - len(ok)} if len(ok) < len(xs) else {}),
    }


def raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops every child


def run(paths: Paths, procs: Procs, meta: dict[str, Any]) -> dict[str, Any]:
    bench = Bench(paths, procs)
    bench.upstream, upstream_port = start_fake(procs, paths, "upstream", "upstream.py")
    slack_api = None
    if slack_available(paths):
        _, slack_port = start_fake(procs, paths, "fake-slack", "fake_slack.py")
        slack_api = f"http://127.0.0.1:{slack_port}/api/"
    targets = [t for t in build(paths, upstream_port, slack_api) if not ONLY or t.name in ONLY]
    for t in targets:
        log(f"starting {t.name}")
        bench.start_target(t)
    bench.guarded("rounds", bench.rounds)
    if SLOW_STREAMS > 0:
        bench.guarded("slow streams", bench.slow)
    if "switchboard" in bench.live:
        target, proc = bench.live["switchboard"]
        if slack_api:
            bench.isolate("switchboard")
            log("switchboard: Slack webhook burst")
            bench.measure("webhook", lambda: webhook.burst(paths, target, slack_api, rate=200, seconds=5))
        if PROFILE_SECONDS > 0:
            for mode in ("json", "sse"):
                bench.isolate("switchboard")
                log(f"switchboard: profiling {mode} at 50 connections")
                bench.measure(
                    f"profile_{mode}", partial(hotpath.profile, paths, target, proc.pid, mode, PROFILE_SECONDS)
                )
    bench.isolate(None)
    meta["slack_pending"] = None if slack_api else "platforms/slack/ does not exist yet"
    meta["missing_peers"] = missing_peers(paths)
    meta["foreign_load"] = sorted(bench.foreign)[:5]
    return bench.results


def main() -> int:
    paths = default_paths()
    raise_nofile()
    signal.signal(signal.SIGTERM, exit_on_signal)
    signal.signal(signal.SIGHUP, exit_on_signal)
    procs = Procs(paths.out / "logs")
    started = time.monotonic()
    meta = environment.describe(paths, ROUNDS, SECONDS, SLOW_STREAMS)
    try:
        results = run(paths, procs, meta)
    finally:
        procs.close()
    meta["load_after"] = environment.loadavg()
    meta["bench_seconds"] = round(time.monotonic() - started, 1)
    doc = {"meta": meta, "results": results}
    raw = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
    (paths.out / "latest.json").write_bytes(raw)
    report = paths.root / "BENCHMARKS.md" if not os.environ.get("BENCH_OUT") else paths.out / "BENCHMARKS.md"
    report.write_text(summary.render(doc, paths))
    report.with_suffix(".json").write_bytes(raw)  # the published table's raw numbers, beside it
    log(f"done in {meta['bench_seconds']} s: {report} and {paths.out / 'latest.json'}")
    print(summary.checks_text(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
