"""`switchboard serve` as an operator meets it: a port in use, the version, an optional
dependency that is not installed."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import httpx

from providers.echo import EchoProvider
from proxy.config import parse_config
from proxy.contracts import AdapterConfig
from proxy.registry import Registry
from tests.servers import free_port

ROOT = Path(__file__).parents[2]


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"store: {{url: 'sqlite:///{tmp_path}/s.db'}}\nproviders: {{echo: {{kind: echo}}}}\n"
        "channels: [{name: demo, providers: [echo]}]\n"
    )
    return cfg


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "proxy", "serve", "--config", str(_config(tmp_path)), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"127.0.0.1:{port} is in use: set server.port or --port"]


def test_ready_is_logged_after_the_port_is_bound(tmp_path: Path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", str(_config(tmp_path)), "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    lines = err.splitlines()
    listening = next(i for i, line in enumerate(lines) if f"listening on http://127.0.0.1:{port}" in line)
    ready = next(i for i, line in enumerate(lines) if "switchboard ready" in line)
    assert listening < ready


def test_version():
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0 and out.stdout.strip().startswith("switchboard 0.")


class NeedyConfig(AdapterConfig):
    kind: Literal["needy"] = "needy"


class NeedsAPackage(EchoProvider):
    config_model = NeedyConfig
    requires = {"no_such_package_for_switchboard": "someextra"}


def test_a_provider_whose_package_is_missing_is_disabled_with_the_install_command():
    settings = parse_config(
        {
            "providers": {"big": {"kind": "needy"}, "echo": {"kind": "echo"}},
            "channels": [{"name": "c", "providers": ["big", "echo"]}],
        },
        {},
        providers=Registry("switchboard.providers", extra={"needy": NeedsAPackage}),
    )
    big = settings.providers["big"]
    assert big.disabled == (
        "needs no_such_package_for_switchboard (make run EXTRAS=someextra, or pip install -e '.[someextra]')"
    )
    assert settings.by_name["c"].providers == ("echo",) and settings.by_name["c"].skipped == ("big",)


def test_without_litellm_installed_a_litellm_provider_is_disabled_not_a_crash(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "litellm" else real(name, *a))
    settings = parse_config(
        {
            "providers": {"local": {"kind": "litellm", "model": "ollama_chat/qwen2.5"}, "echo": {"kind": "echo"}},
            "channels": [{"name": "c", "providers": ["local", "echo"]}],
        },
        {},
    )
    assert settings.providers["local"].disabled == (
        "needs litellm (make run EXTRAS=litellm, or pip install -e '.[litellm]')"
    )
    assert settings.by_name["c"].providers == ("echo",)
