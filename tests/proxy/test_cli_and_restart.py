"""`switchboard chat` from a terminal, and context that survives a restart (SQLite store)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import openai

from proxy.app import create_app
from proxy.config import parse_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import serve_asgi

ROOT = Path(__file__).parents[2]


def test_chat_command_streams_answers_and_keeps_history(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"store: {{url: 'sqlite:///{tmp_path}/s.db'}}\nproviders: {{echo: {{kind: echo}}}}\n"
        "channels: [{name: demo, providers: [echo]}]\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "chat", "demo", "--config", str(cfg), "--session", "t"],
        input="hello there\n/clear\nbye\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "echo> echo: hello there" in out.stdout and "(history cleared)" in out.stdout and "echo: bye" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "proxy", "chat", "nope", "--config", str(cfg)],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "unknown channel 'nope'" in bad.stderr and "demo" in bad.stderr


async def test_transcript_survives_restart(tmp_path: Path):
    async with FakeOpenAI() as up:

        def app():
            return create_app(
                parse_config(
                    {
                        "store": {"url": f"sqlite:///{tmp_path}/s.db"},
                        "keys": [{"key": "k"}],
                        "providers": {"gpt": {"kind": "openai", "base_url": up.base_url, "api_key": "sk"}},
                        "channels": [{"name": "c", "providers": ["gpt"]}],
                    },
                    {},
                )
            )

        for text in ("remember 7", "what number?"):
            async with serve_asgi(app()) as url:  # a fresh process-equivalent each time
                c = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
                await c.chat.completions.create(model="c", messages=[{"role": "user", "content": text}], user="bob")
    sent = [(m["role"], m["content"]) for m in up.chat_requests()[-1].json["messages"]]
    assert sent == [("user", "remember 7"), ("assistant", "upstream: remember 7"), ("user", "what number?")]
