"""Redis goes away under a running Switchboard (`python -m proxy serve` on a redis-server of this
test's own) and comes back on the same port: while it is down `/readyz` is 503 naming the store,
the OpenAI API answers 503 `store_unavailable` (OpenAI JSON, never a 500 or a hang) and a platform
webhook 503 (so the platform delivers again); once it is back, without restarting Switchboard,
`/readyz` is 200, the bus listens again and the conversation continues with its history."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from tests.fakes.openai_upstream import FakeOpenAI
from tests.instances import serving
from tests.platforms.synology.synology_kit import BOT_TOKEN, FakeNAS, form
from tests.servers import free_port

KEY = "sk-outage"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class RedisServer:
    """A redis-server that can be stopped and started again on the same port, keeping its data
    (append-only file), as a restarted Redis does."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("redis-server")
        self.port, self.workdir = free_port(), workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.binary is not None
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"]
        args += ["--appendfsync", "always", "--dir", str(self.workdir)]
        self.proc = subprocess.Popen([self.binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        try:
            for _ in range(200):
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                time.sleep(0.05)
            raise AssertionError("redis-server did not start")
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make system-deps installs it)")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def config(store: str, upstream: str, nas: str) -> dict[str, Any]:
    return {
        "store": {"url": store},
        "keys": [{"key": KEY}],
        "providers": {"main": {"kind": "openai", "base_url": upstream, "api_key": "sk-up"}},
        "platforms": {"nas": {"kind": "synology", "tokens": [BOT_TOKEN], "api_base": nas, "bot_token": BOT_TOKEN}},
        "channels": [{"name": "chat", "providers": ["main"]}],
    }


async def ask(client: openai.AsyncOpenAI, text: str) -> str:
    r = await client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": text}],
        extra_headers={"X-Conversation-Id": "c-1"},
    )
    return r.choices[0].message.content or ""


async def test_redis_down_then_back_without_a_restart(redis_server: RedisServer, tmp_path: Path):
    async with FakeOpenAI(answer="noted") as up, FakeNAS() as nas:
        cfg = config(redis_server.url, up.base_url, nas.base)
        async with serving(tmp_path, "sb", cfg) as url, httpx.AsyncClient(timeout=30) as c:
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=30)
            assert await ask(client, "my name is Ada") == "noted"
            assert (await c.get(f"{url}/readyz")).json()["bus"] == "listening"

            redis_server.stop()
            ready = await c.get(f"{url}/readyz")
            assert ready.status_code == 503 and ready.json()["store"] == "unreachable", ready.text
            with pytest.raises(openai.APIStatusError) as refused:
                await ask(client, "are you there?")
            assert refused.value.status_code == 503
            error = refused.value.response.json()["error"]
            assert error["code"] == "store_unavailable" and "store is unavailable" in error["message"]
            assert refused.value.response.headers["retry-after"] == "5"
            hook = await c.post(f"{url}/hooks/nas", content=form("bot_dm", text="hi", post_id="p-1"), headers=FORM)
            assert hook.status_code == 503  # not claimed: the platform sends it again later
            assert (await c.get(f"{url}/healthz")).status_code == 200  # the process is alive
            metrics = (await c.get(f"{url}/metrics")).text
            assert 'switchboard_store_errors_total{where="openai"} 1.0' in metrics
            assert 'switchboard_store_errors_total{where="nas"} 1.0' in metrics

            redis_server.start()
            for _ in range(300):
                ready = await c.get(f"{url}/readyz")
                if ready.status_code == 200 and ready.json().get("bus") == "listening":
                    break
                await asyncio.sleep(0.05)
            assert ready.status_code == 200 and ready.json()["bus"] == "listening", ready.text
            up.answer = "you are Ada"
            assert await ask(client, "what is my name?") == "you are Ada"
            sent = [m["content"] for m in up.chat_requests()[-1].json["messages"]]
            assert sent == ["my name is Ada", "noted", "what is my name?"]  # the history survived
            hook = await c.post(f"{url}/hooks/nas", content=form("bot_dm", text="hi", post_id="p-1"), headers=FORM)
            assert hook.status_code == 200
            for _ in range(250):
                if nas.sent:
                    break
                await asyncio.sleep(0.02)
            assert [s["payload"]["text"] for s in nas.sent] == ["you are Ada"]
        log = (tmp_path / "sb.log").read_text()
        assert "Traceback" not in log, log[-3000:]
