"""CPU per request of two or more Switchboard checkouts, side by side (a tool for old-vs-new
work on the hot path, not part of `make bench`).

    cd bench && ../.venv/bin/python cpu_ab.py /tmp/old /work/main [--config logs-off|defaults] [--rounds 4]

Each checkout serves the bench config (logs off by default) with `python -m proxy serve` from
its own directory; wrk loads them in turn (JSON and SSE at 50 connections, `--seconds` each,
the others paused), and the CPU time of each server process is read from /proc before and
after. Printed: CPU µs per request per round and the median, and req/s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from loads import chat_load
from procs import Procs, free_port, post_ok, tree_cpu_seconds, wait_ready
from run import start_fake
from targets import Target, default_paths, switchboard_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkouts", nargs="+")
    ap.add_argument("--config", choices=("logs-off", "defaults"), default="logs-off")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--modes", default="json,sse")
    args = ap.parse_args()
    paths = default_paths()
    procs = Procs(paths.out / "logs")
    live: list[tuple[str, Target, Any]] = []
    try:
        _, up_port = start_fake(procs, paths, "upstream", "upstream.py")
        upstream = f"http://127.0.0.1:{up_port}/v1"
        for i, checkout in enumerate(args.checkouts):
            port = free_port()
            name = f"ab{i}"
            cfg = switchboard_config(paths, port, upstream, None, logs_off=args.config == "logs-off", name=name)
            target = Target(name, [], port, {"json": "bench", "sse": "bench", "slow": "slow"},
                            {"authorization": "Bearer sk-bench"})
            proc = procs.start(name, [paths.python, "-m", "proxy", "serve", "--config", str(cfg)],
                               cwd=Path(checkout).resolve())
            wait_ready(proc, lambda t=target: post_ok(t.url, t.body("json"), t.request_headers()), 30)
            live.append((checkout, target, proc))
        for _, target, _proc in live:  # warm-up
            for mode in args.modes.split(","):
                chat_load(paths, target, mode, 50, 1)
        cpu: dict[tuple[str, str], list[float]] = {}
        rps: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for mode in args.modes.split(","):
                for checkout, target, proc in live:
                    for _, _, other in live:
                        other.pause(other is not proc)
                    time.sleep(0.2)
                    before = tree_cpu_seconds(proc.pid)
                    res = chat_load(paths, target, mode, 50, args.seconds)
                    used = tree_cpu_seconds(proc.pid) - before
                    cpu.setdefault((checkout, mode), []).append(used / res["requests"] * 1e6)
                    rps.setdefault((checkout, mode), []).append(res["rps"])
        for (checkout, mode), xs in cpu.items():
            rounds = " ".join(f"{x:.0f}" for x in xs)
            print(f"{checkout:30} {mode:4} cpu µs/req median {statistics.median(xs):6.1f}  "
                  f"rounds {rounds}  req/s median {statistics.median(rps[checkout, mode]):.0f}")
    finally:
        for _, _, proc in live:
            proc.pause(False)
        procs.close()


if __name__ == "__main__":
    main()
