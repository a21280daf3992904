"""The other reload triggers: SIGHUP and `switchboard reload` on a real `python -m proxy serve`
subprocess, and `server.watch_config` noticing an edit of the file."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import yaml

from proxy.app import create_app
from proxy.config import load_config
from tests.servers import free_port, serve_asgi

ROOT = Path(__file__).parents[2]
ADMIN = "adm-secret-2"
API = "sk-api-2"
PATIENCE = 60.0


def config(tmp_path: Path, port: int, channels: list[str], **server: Any) -> dict[str, Any]:
    return {
        "server": {"port": port, **server},
        "store": {"url": f"sqlite:///{tmp_path}/s.db"},
        "keys": [{"key": API}],
        "admin": {"keys": ["${SWITCHBOARD_ADMIN_KEY_FOR_TEST}"]},
        "providers": {"echo": {"kind": "echo"}},
        "channels": [{"name": n, "providers": ["echo"]} for n in channels],
    }


def models(url: str) -> set[str]:
    r = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {API}"}, timeout=30)
    return {m["id"] for m in r.json()["data"]}


class Log:
    """The server's stderr, line by line, read by a thread: wait for a line without polling."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str) -> str:
        while True:
            line = self.lines.get(timeout=PATIENCE)
            assert line is not None, f"the server ended before logging {text!r}:\n{''.join(self.seen)}"
            self.seen.append(line)
            if text in line:
                return line


def reload_command(cfg: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "reload", "--config", str(cfg), *extra],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        cwd=ROOT,
        env=env,
    )


def test_sighup_and_the_reload_command_reload_a_running_server(tmp_path: Path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config(tmp_path, port, ["demo"])))
    env = {**os.environ, "SWITCHBOARD_ADMIN_KEY_FOR_TEST": ADMIN, "SWITCHBOARD_ADMIN_KEY": ADMIN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", str(cfg)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    log = Log(proc.stderr)
    try:
        log.wait_for("switchboard ready")
        assert models(url) == {"demo"}

        cfg.write_text(yaml.safe_dump(config(tmp_path, port, ["demo", "more"])))
        proc.send_signal(signal.SIGHUP)
        line = log.wait_for("config reloaded (sighup)")
        assert "channels.more (added)" in line
        assert proc.poll() is None and models(url) == {"demo", "more"}

        cfg.write_text(yaml.safe_dump(config(tmp_path, port + 1 if port < 65535 else port - 1, ["demo", "third"])))
        done = reload_command(cfg, env, "--url", url)
        assert done.returncode == 0, done.stderr
        assert "channels.third (added)" in done.stdout and "channels.more (removed)" in done.stdout
        assert "needs a restart: server.port" in done.stdout
        assert models(url) == {"demo", "third"}

        cfg.write_text("channels: [oops")
        refused = reload_command(cfg, env, "--url", url)
        assert refused.returncode == 1 and "not valid YAML" in refused.stderr
        log.wait_for("config reload (admin) failed, the running config stays")
        assert models(url) == {"demo", "third"}

        cfg.write_text(yaml.safe_dump(config(tmp_path, port, ["demo", "fourth"])))
        by_pid = reload_command(cfg, env, "--pid", str(proc.pid))
        assert by_pid.returncode == 0, by_pid.stderr
        log.wait_for("config reloaded (sighup)")
        assert models(url) == {"demo", "fourth"}

        no_key = reload_command(cfg, {k: v for k, v in env.items() if k != "SWITCHBOARD_ADMIN_KEY"})
        assert no_key.returncode == 2 and "SWITCHBOARD_ADMIN_KEY" in no_key.stderr
        assert proc.poll() is None
        assert not any(ADMIN in line for line in log.seen)
    finally:
        proc.terminate()
        proc.wait(30)


async def test_watch_config_reloads_when_the_file_changes(tmp_path: Path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config(tmp_path, 0, ["demo"], watch_config=True)))
    monkeypatch.setenv("SWITCHBOARD_ADMIN_KEY_FOR_TEST", ADMIN)
    app = create_app(load_config(cfg))
    reloader = app.state.reloader
    async with serve_asgi(app) as url:
        assert await asyncio.to_thread(models, url) == {"demo"}
        seen = reloader.generation
        # The watcher starts with the server; an edit it could have missed while starting up is
        # made again, so the wait is for the reload itself, with generous patience.
        for _ in range(20):
            cfg.write_text(yaml.safe_dump(config(tmp_path, 0, ["demo", "watched"], watch_config=True)))
            try:
                await asyncio.wait_for(reloader.wait(seen), 3)
                break
            except TimeoutError:
                continue
        assert await asyncio.to_thread(models, url) == {"demo", "watched"}
