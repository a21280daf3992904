"""The bench targets: how to start each one, reach it, and ask it for the same three answers
(canned JSON, a fast 20-chunk stream, a slow 100 ms-per-chunk stream) from the one upstream."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from procs import free_port

SLACK_SECRET = "bench-signing-secret"
#: The `switchboard-limits` target: the same config plus limits on every key and on the bench
#: channel, high enough that nothing is refused, so the cell measures what checking them costs.
LIMITS = {
    "keys": {"*": {"rpm": 1_000_000_000, "tokens_per_day": 1_000_000_000_000}},
    "channels": {"bench": {"rpm": 1_000_000_000, "concurrent": 10_000}},
}


@dataclass
class Target:
    name: str
    argv: list[str]
    port: int
    models: dict[str, str]  # json / sse / slow -> the `model` the target expects
    headers: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    ready_timeout: float = 60.0
    python: bool = False  # profiled with py-spy when it is Switchboard
    #: The API dialect the target is driven in: `openai` (chat completions) or `anthropic` (messages).
    dialect: str = "openai"

    @property
    def url(self) -> str:
        path = "/v1/messages" if self.dialect == "anthropic" else "/v1/chat/completions"
        return f"http://127.0.0.1:{self.port}{path}"

    def body(self, mode: str) -> bytes:
        data: dict[str, Any] = {
            "model": self.models[mode],
            "stream": mode != "json",
            "messages": [{"role": "user", "content": "Say hello."}],
        }
        if self.dialect == "anthropic":
            data["max_tokens"] = 256
        return orjson.dumps(data)

    def request_headers(self) -> dict[str, str]:
        return {"content-type": "application/json", **self.headers}


@dataclass
class Paths:
    root: Path  # the repository: .venv, .bench-venv
    bench: Path  # bench/ (these scripts, node_modules)
    out: Path  # bench/results/ (git-ignored): generated configs, logs, raw JSON

    @property
    def python(self) -> str:
        return str(self.root / ".venv/bin/python")


def slack_available(paths: Paths) -> bool:
    """The Slack adapter is being written by another engineer; bench it once it exists."""
    return (paths.root / "platforms/slack/__init__.py").exists()


def switchboard_config(
    paths: Paths,
    port: int,
    upstream: str,
    slack_api: str | None,
    limits: dict[str, Any] | None = None,
    *,
    logs_off: bool = False,
    name: str | None = None,
) -> Path:
    """bench/config.yaml with the ports filled in, plus the Slack platform when it exists (and
    `limits` when given; `logs_off`: `server.log_level: warning`, no per-request lines)."""
    data: dict[str, Any] = yaml.safe_load((paths.bench / "config.yaml").read_text())
    text = orjson.dumps(data).decode()
    text = text.replace("${BENCH_PORT}", str(port)).replace("${BENCH_UPSTREAM}", upstream)
    data = orjson.loads(text)
    data["server"]["port"] = port
    if slack_api:
        data.setdefault("platforms", {})["slack"] = {
            "kind": "slack",
            "signing_secret": SLACK_SECRET,
            "bot_token": "xoxb-bench",
            "api_base": slack_api,
        }
        data["channels"].insert(0, {"name": "slack", "match": {"platform": "slack"}, "providers": ["up"], "history": 0})
    if limits:
        data["limits"] = limits
    if logs_off:
        data["server"]["log_level"] = "warning"
    name = name or ("switchboard-limits" if limits else "switchboard-logs-off" if logs_off else "switchboard")
    path = paths.out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def litellm_config(paths: Paths, upstream: str) -> Path:
    models = [
        {"model_name": name, "litellm_params": {"model": f"openai/{model}", "api_base": upstream, "api_key": "sk-up"}}
        for name, model in (("bench", "m"), ("slow", "slow"))
    ]
    data = {
        "model_list": models,
        "general_settings": {"master_key": "sk-bench"},
        "litellm_settings": {"telemetry": False},
    }
    path = paths.out / "litellm.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def build(paths: Paths, upstream_port: int, slack_api: str | None) -> list[Target]:
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    same = {"json": "m", "sse": "m", "slow": "slow"}
    channels = {"json": "bench", "sse": "bench", "slow": "slow"}
    sb_port, pt_port, lim_port, quiet_port = free_port(), free_port(), free_port(), free_port()
    targets = [
        Target("direct", [], upstream_port, same),
        Target(
            "passthrough",
            [paths.python, str(paths.bench / "passthrough.py"), "--port", str(pt_port), "--upstream", upstream],
            pt_port,
            same,
            python=True,
        ),
        Target(
            "switchboard",
            [
                str(paths.root / ".venv/bin/switchboard"),
                "serve",
                "--config",
                str(switchboard_config(paths, sb_port, upstream, slack_api)),
            ],
            sb_port,
            channels,
            {"authorization": "Bearer sk-bench"},
            cwd=paths.root,
            python=True,
        ),
        Target(  # the same, with limits: `make bench` reports its req/s ÷ Switchboard's
            "switchboard-limits",
            [
                str(paths.root / ".venv/bin/switchboard"),
                "serve",
                "--config",
                str(switchboard_config(paths, lim_port, upstream, None, LIMITS)),
            ],
            lim_port,
            channels,
            {"authorization": "Bearer sk-bench"},
            cwd=paths.root,
        ),
        Target(  # the same, logs off: what the default per-request log lines cost
            "switchboard-logs-off",
            [
                str(paths.root / ".venv/bin/switchboard"),
                "serve",
                "--config",
                str(switchboard_config(paths, quiet_port, upstream, None, logs_off=True)),
            ],
            quiet_port,
            channels,
            {"authorization": "Bearer sk-bench"},
            cwd=paths.root,
        ),
    ]
    anthropic_port = free_port()
    targets.append(  # the same config, driven through the Anthropic Messages door
        Target(
            "switchboard-anthropic",
            [
                str(paths.root / ".venv/bin/switchboard"),
                "serve",
                "--config",
                str(switchboard_config(paths, anthropic_port, upstream, None, name="switchboard-anthropic")),
            ],
            anthropic_port,
            channels,
            {"x-api-key": "sk-bench", "anthropic-version": "2023-06-01"},
            cwd=paths.root,
            dialect="anthropic",
        )
    )
    baseline = os.environ.get("BENCH_BASELINE")
    if baseline:  # another checkout (`git worktree add /tmp/old <commit>`) with the logs-off config
        port = free_port()
        targets.append(
            Target(
                "switchboard-baseline",
                [
                    paths.python,
                    "-m",
                    "proxy",
                    "serve",
                    "--config",
                    str(switchboard_config(paths, port, upstream, None, logs_off=True, name="switchboard-baseline")),
                ],
                port,
                channels,
                {"authorization": "Bearer sk-bench"},
                cwd=Path(baseline).resolve(),
            )
        )
    portkey = paths.bench / "node_modules/@portkey-ai/gateway/build/start-server.js"
    node = shutil.which("node")
    if portkey.exists() and node:
        port = free_port()
        targets.append(
            Target(
                "portkey",
                [node, "--import", str(paths.bench / "portkey_shim.mjs"), str(portkey), f"--port={port}", "--headless"],
                port,
                same,
                {"authorization": "Bearer sk-up", "x-portkey-provider": "openai", "x-portkey-custom-host": upstream},
                env={"NODE_ENV": "production"},
                cwd=paths.out,
            )
        )
    litellm = paths.root / ".bench-venv/bin/litellm"
    if litellm.exists():
        port = free_port()
        targets.append(
            Target(
                "litellm",
                [
                    str(litellm),
                    "--config",
                    str(litellm_config(paths, upstream)),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--num_workers",
                    "1",
                    "--telemetry",
                    "False",
                ],
                port,
                channels,
                {"authorization": "Bearer sk-bench"},
                cwd=paths.out,
                ready_timeout=120.0,
                env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_MODE": "PRODUCTION"},
            )
        )
    return targets


def missing_peers(paths: Paths) -> list[str]:
    out = []
    if not (paths.root / ".bench-venv/bin/litellm").exists():
        out.append("litellm (no .bench-venv: run `make -C bench deps`)")
    if not shutil.which("node"):
        out.append("portkey (Node is not installed)")
    elif not (paths.bench / "node_modules/@portkey-ai/gateway").exists():
        out.append("portkey (run `npm ci` in bench/)")
    return out


def default_paths() -> Paths:
    bench = Path(__file__).resolve().parent
    root = Path(os.environ.get("SWITCHBOARD_ROOT") or bench.parent).resolve()
    out = Path(os.environ.get("BENCH_OUT") or bench / "results").resolve()
    out.mkdir(parents=True, exist_ok=True)
    return Paths(root, bench, out)
