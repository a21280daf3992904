"""Load generators: wrk (closed loop, fixed connections) and the slow-stream client."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

from procs import Proc, die_with_parent, tree_rss_mb
from targets import Paths, Target


def wrk(script: Path, url: str, connections: int, seconds: float, env: dict[str, str]) -> dict[str, Any]:
    """One wrk run; the Lua script's done() prints a `BENCH_JSON {...}` line we parse."""
    duration = f"-d{max(1, round(seconds))}s"  # wrk takes whole seconds
    argv = ["wrk", "-t1", f"-c{connections}", duration, "--timeout", "10s", "-s", str(script), url]
    try:
        run = subprocess.run(
            argv,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            preexec_fn=die_with_parent,
        )
    except subprocess.TimeoutExpired:
        return {"failed": "wrk did not finish"}
    for line in run.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            raw = orjson.loads(line[len("BENCH_JSON ") :])
            return summarize(raw)
    return {"failed": (run.stderr or run.stdout).strip()[-300:] or f"wrk exited {run.returncode}"}


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {
        "requests": raw["requests"],
        "seconds": round(seconds, 3),
        "rps": round(raw["requests"] / seconds, 1) if seconds else 0.0,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "errors": errors,
        "error_kinds": {k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]},
    }


def chat_load(paths: Paths, target: Target, mode: str, connections: int, seconds: float) -> dict[str, Any]:
    headers = "\n".join(f"{k}: {v}" for k, v in target.request_headers().items())
    env = {"BENCH_BODY": target.body(mode).decode(), "BENCH_HEADERS": headers}
    return wrk(paths.bench / "post.lua", target.url, connections, seconds, env)


def slow_streams(paths: Paths, target: Target, proc: Proc | None, streams: int, timeout: float) -> dict[str, Any]:
    """Hold `streams` slow streams through the target (bench/slowclient.py in its own process),
    sampling the target's RSS every 100 ms; the peak goes into the result."""
    argv = [
        paths.python,
        str(paths.bench / "slowclient.py"),
        "--url",
        target.url,
        "--model",
        target.models["slow"],
        "--streams",
        str(streams),
        "--timeout",
        str(timeout),
    ]
    for k, v in target.headers.items():
        argv += ["--header", f"{k}: {v}"]
    peak = 0.0
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=die_with_parent)
    deadline = time.monotonic() + timeout + 30
    try:
        while client.poll() is None and time.monotonic() < deadline:
            if proc is not None:
                peak = max(peak, tree_rss_mb(proc.pid))
            time.sleep(0.1)
    finally:
        if client.poll() is None:
            client.kill()
    out, err = client.communicate(timeout=10)
    try:
        result: dict[str, Any] = orjson.loads(out.strip().splitlines()[-1])
    except (IndexError, orjson.JSONDecodeError):
        return {
            "failed": err.decode(errors="replace").strip()[-300:] or "the slow-stream client failed",
            "peak_rss_mb": round(peak, 1) if proc else None,
        }
    result["peak_rss_mb"] = round(peak, 1) if proc else None
    return result
