"""What the numbers were measured on: machine, load, versions, date."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import time
from typing import Any

from targets import Paths


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _run(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "n/a"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "n/a"


def describe(paths: Paths, rounds: int, seconds: float, slow_streams: int) -> dict[str, Any]:
    portkey = paths.bench / "node_modules/@portkey-ai/gateway/package.json"
    bench_py = paths.root / ".bench-venv/bin/python"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "load_before": loadavg(),
        "commit": _run(["git", "-C", str(paths.root), "rev-parse", "--short", "HEAD"]),
        "python": platform.python_version(),
        "switchboard": _version("switchboard"),
        "starlette": _version("starlette"),
        "uvicorn": _version("uvicorn"),
        "aiohttp": _version("aiohttp"),
        "uvloop": _version("uvloop"),
        "litellm": _run([str(bench_py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"])
        if bench_py.exists()
        else "n/a",
        "portkey": json.loads(portkey.read_text())["version"] if portkey.exists() else "n/a",
        "node": _run(["node", "--version"]),
        "wrk": _run(["wrk", "-v"]).split(" [")[0],
        "rounds": rounds,
        "seconds_per_run": seconds,
        "slow_streams": slow_streams,
    }
