"""Usage accounting through the real app: the official SDK spends tokens on two channels with a
named key, a Synology user spends some through a provider that does not ask for usage (estimated),
and `GET /admin/usage`, `switchboard usage` and `/metrics` report them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from proxy.app import create_app
from proxy.config import load_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.platforms.synology.synology_kit import BOT_TOKEN, FakeNAS, form
from tests.servers import serve_asgi

ROOT = Path(__file__).parents[2]
ADMIN = "adm-usage-1"
HI = [{"role": "user", "content": "hello there"}]


def config(tmp: Path, upstream: str, nas: str) -> Path:
    path = tmp / "config.yaml"
    data: dict[str, Any] = {
        "store": {"url": f"sqlite:///{tmp}/s.db"},
        "keys": [{"key": "sk-team-a", "name": "team-a"}],
        "admin": {"keys": [ADMIN]},
        "providers": {
            "main": {"kind": "openai", "base_url": upstream, "api_key": "sk-up", "model": "gpt-4o-mini"},
            "quiet": {"kind": "openai", "base_url": upstream, "api_key": "sk-up", "model": "m2", "stream_usage": False},
        },
        "platforms": {"nas": {"kind": "synology", "tokens": [BOT_TOKEN], "api_base": nas, "bot_token": BOT_TOKEN}},
        "channels": [
            {"name": "support", "providers": ["main"], "match": {"platform": "openai"}},
            {"name": "sales", "providers": ["main"], "match": {"platform": "openai"}},
            {"name": "chat", "providers": ["quiet"]},
        ],
        "prices": {"gpt-4o-mini": {"prompt": 150_000, "completion": 600_000}},
    }
    path.write_text(yaml.safe_dump(data))
    return path


async def admin_usage(c: httpx.AsyncClient, url: str, **params: str) -> httpx.Response:
    return await c.get(f"{url}/admin/usage", params=params, headers={"Authorization": f"Bearer {ADMIN}"})


async def test_tokens_are_reported_by_channel_key_model_and_user(tmp_path: Path):
    async with FakeOpenAI(answer="one two three") as up, FakeNAS() as nas:
        path = config(tmp_path, up.base_url, nas.base)
        app = create_app(load_config(path))
        async with serve_asgi(app) as url, httpx.AsyncClient() as c:
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-team-a", max_retries=0)
            for _ in range(2):
                await client.chat.completions.create(model="support", messages=HI)  # type: ignore[arg-type]
            stream = await client.chat.completions.create(model="sales", messages=HI, stream=True)  # type: ignore[arg-type]
            async for _ in stream:
                pass
            sent = form("bot_dm", text="how are you today", post_id="u1")
            assert (
                await c.post(
                    f"{url}/hooks/nas", content=sent, headers={"Content-Type": "application/x-www-form-urlencoded"}
                )
            ).status_code == 200
            for _ in range(250):
                if nas.sent:
                    break
                await asyncio.sleep(0.02)

            got: dict[str, Any] = {}
            for _ in range(200):  # usage is written in batches, every few seconds
                got = (await admin_usage(c, url, by="channel")).json()
                if got["total"]["requests"] == 4:
                    break
                await asyncio.sleep(0.05)
            by_channel = {g["channel"]: g for g in got["groups"]}
            # the fake reports 5 prompt tokens and one completion token per word
            assert (by_channel["support"]["requests"], by_channel["support"]["prompt_tokens"]) == (2, 10)
            assert by_channel["support"]["completion_tokens"] == 6 and by_channel["support"]["estimated_requests"] == 0
            assert (by_channel["sales"]["prompt_tokens"], by_channel["sales"]["completion_tokens"]) == (5, 3)
            assert by_channel["support"]["cost"] == round((10 * 150_000 + 6 * 600_000) / 1e6, 6)
            chat = by_channel["chat"]
            assert chat["requests"] == 1 and chat["estimated_requests"] == 1 and chat["completion_tokens"] > 0
            assert chat["cost"] is None  # m2 has no price

            by_key = {g["key"]: g for g in (await admin_usage(c, url, by="key")).json()["groups"]}
            assert by_key["team-a"]["requests"] == 3 and by_key["-"]["requests"] == 1
            by_user = {g["user"] for g in (await admin_usage(c, url, by="user")).json()["groups"]}
            assert by_user == {"-", nas_user(sent)}
            assert {g["model"] for g in (await admin_usage(c, url, by="model")).json()["groups"]} >= {"gpt-4o-mini"}

            bad = await admin_usage(c, url, by="colour")
            assert bad.status_code == 400 and "colour" in bad.json()["error"]["message"]
            bad = await admin_usage(c, url, since="forever")
            assert bad.status_code == 400 and "24h" in bad.json()["error"]["message"]
            assert (await c.get(f"{url}/admin/usage", headers={"Authorization": "Bearer sk-team-a"})).status_code == 401

            metrics = (await c.get(f"{url}/metrics")).text
            assert 'switchboard_tokens_total{channel="support",direction="prompt",model="gpt-4o-mini"} 10.0' in metrics

    # after the server stopped, the CLI reads the same store
    out = await usage_cli(path, "--by", "channel", "--since", "7d")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].split() == ["channel", "requests", "prompt", "completion", "total", "estimated", "cost"]
    assert any(line.split()[:2] == ["support", "2"] for line in lines)
    assert lines[-1].split()[:2] == ["(total)", "4"]
    assert json.loads((await usage_cli(path, "--by", "key", "--json")).stdout)["total"]["requests"] == 4
    bad = await usage_cli(path, "--since", "1w")
    assert bad.returncode == 2 and "24h" in bad.stderr


async def usage_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "proxy", "usage", "--config", str(config), *args]
    return await asyncio.to_thread(subprocess.run, command, cwd=ROOT, capture_output=True, text=True, timeout=60)


def nas_user(body: bytes) -> str:
    from urllib.parse import parse_qs

    return parse_qs(body.decode())["user_id"][0]
