"""Where Switchboard's time goes: py-spy samples the running server while wrk loads it.

py-spy (installed in .bench-venv, never in the runtime dependencies) writes collapsed stacks;
we fold them into time per layer (ours, Starlette, uvicorn, aiohttp, ...) by the file of the
innermost frame, and into the heaviest functions of our own code counted inclusively.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from loads import chat_load
from procs import die_with_parent
from targets import Paths, Target

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
LAYERS = (  # first match wins, on the frame's file path (py-spy shortens it to package/module.py)
    ("Switchboard proxy/", "proxy/"),
    ("Switchboard providers/", "providers/"),
    ("Switchboard platforms/", "platforms/"),
    ("starlette", "starlette/"),
    ("uvicorn", "uvicorn/"),
    ("httptools", "httptools/"),
    ("aiohttp", "aiohttp/"),
    ("multidict/yarl", "multidict/"),
    ("multidict/yarl", "yarl/"),
    ("uvloop", "uvloop/"),
    ("asyncio", "asyncio/"),
    ("pydantic", "pydantic"),
    ("logging", "logging/"),
    ("tenacity", "tenacity/"),
    ("anyio", "anyio/"),
)
OURS = ("proxy/", "providers/", "platforms/")


def _under(path: str, package: str) -> bool:
    return path.startswith(package) or f"/{package}" in path


def layer_of(path: str) -> str:
    for name, package in LAYERS:
        if _under(path, package):
            return name
    return "other (stdlib)"


def parse_frame(frame: str) -> tuple[str, str]:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip(), ""
    return m.group("func"), m.group("file")


def fold(raw: str, root: Path) -> dict[str, Any]:
    """Collapsed stacks -> share of samples per layer (innermost frame) and per own function."""
    by_layer: Counter[str] = Counter()
    own_inclusive: Counter[str] = Counter()
    innermost: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [parse_frame(f) for f in stack.split(";")]
        frames = [f for f in frames if f[1]] or frames
        total += n
        by_layer[layer_of(frames[-1][1])] += n
        innermost[f"{frames[-1][1]}:{frames[-1][0]}"] += n
        seen = set()
        for func, file in frames:
            if any(_under(file, p) for p in OURS) and not file.endswith("cli.py"):
                key = f"{file.split(str(root) + '/', 1)[-1]}:{func}"
                if key not in seen:
                    seen.add(key)
                    own_inclusive[key] += n
    pct = (lambda n: round(100 * n / total, 1)) if total else (lambda n: 0.0)
    return {
        "samples": total,
        "layers_pct": {k: pct(v) for k, v in by_layer.most_common()},
        "own_functions_inclusive_pct": {k: pct(v) for k, v in own_inclusive.most_common(15)},
        "innermost_frames_pct": {k: pct(v) for k, v in innermost.most_common(15)},
    }


def profile(paths: Paths, target: Target, pid: int, mode: str, seconds: float = 6.0) -> dict[str, Any]:
    """py-spy for `seconds` on `pid` while wrk holds 50 connections of `mode` against it."""
    spy = paths.root / ".bench-venv/bin/py-spy"
    if not spy.exists():
        return {"failed": "py-spy is not installed in .bench-venv"}
    out = paths.out / f"profile-{target.name}-{mode}.txt"
    load: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: load.update(chat_load(paths, target, mode, 50, seconds + 2)))
    runner.start()
    try:
        run = subprocess.run(
            [
                str(spy),
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str(out),
                "--nonblocking",
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            preexec_fn=die_with_parent,
        )
    finally:
        runner.join(seconds + 40)
    if run.returncode != 0 or not out.exists():
        return {"failed": (run.stderr or run.stdout).strip()[-300:]}
    result = fold(out.read_text(), paths.root)
    result["rps_while_sampled"] = load.get("rps")
    result["raw"] = str(out.relative_to(paths.root)) if out.is_relative_to(paths.root) else str(out)
    return result
