"""Switchboard as its users run it: `python -m proxy serve --config FILE` in a process of its own,
on a free loopback port, ready when `/readyz` says so. Several of them on one redis-server are
the instances behind a load balancer."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.servers import free_port

ROOT = Path(__file__).parents[1]


@contextlib.asynccontextmanager
async def serving(tmp: Path, name: str, config: dict[str, Any]) -> AsyncIterator[str]:
    """Serve `config` (its `server.port` is chosen here) as process `name`; yields its base URL.
    Its log is `tmp/<name>.log`, shown when it fails to start."""
    port = free_port()
    path, log = tmp / f"{name}.yaml", tmp / f"{name}.log"
    server = {**config.get("server", {}), "port": port}
    path.write_text(yaml.safe_dump({**config, "server": server}))
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "--config", str(path), cwd=ROOT, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as c:
            for _ in range(600):
                assert proc.returncode is None, log.read_text()[-3000:]
                with contextlib.suppress(httpx.TransportError):
                    if (await c.get(f"{url}/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"{name} did not start\n{log.read_text()[-3000:]}")
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 20)
