"""The core's chat-platform pipeline, through /hooks/{name}, with a minimal platform defined here:
dedupe, commands, non-text messages, routing by prefix/chat, sessions, failure apology, stop."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Literal

import httpx
import orjson
import pytest

from proxy.app import create_app
from proxy.config import parse_config
from proxy.contracts import AdapterConfig, Answer, Platform
from proxy.registry import Registry
from proxy.types import Inbound, WebRequest, WebResponse
from tests.servers import free_port, serve_asgi


class LoopConfig(AdapterConfig):
    kind: Literal["loop"] = "loop"


class LoopPlatform(Platform):
    """JSON in, deliveries recorded in memory: the smallest possible adapter."""

    config_model = LoopConfig
    delivered: dict[str, list[tuple[str, str, bool]]] = {}
    jobs: dict[str, object] = {}

    def verify(self, request: WebRequest) -> None:
        return None  # a test platform: every request is trusted

    async def receive(self, request: WebRequest) -> WebResponse:
        m = orjson.loads(request.body)
        if not await self.ctx.claim(m["id"]):
            return WebResponse(200, b"dup")
        msg = Inbound(
            self.name,
            m["id"],
            m.get("chat", "c1"),
            m.get("user", "u1"),
            m.get("text", ""),
            kind=m.get("kind", "text"),
            direct=m.get("direct", True),
            thread_id=m.get("thread"),
        )
        LoopPlatform.jobs[m["id"]] = self.ctx.submit(self, msg)
        return WebResponse(200, b"ok")

    async def deliver(self, msg: Inbound, answer: Answer) -> None:
        pieces = [p async for p in answer]
        assert "".join(pieces) == answer.text
        LoopPlatform.delivered.setdefault(msg.event_id, []).append((answer.text, msg.chat_id, answer.stopped))


def app(tmp_path, **extra):
    LoopPlatform.delivered.clear()
    data = {
        "store": {"url": f"sqlite:///{tmp_path}/d.db"},
        "providers": {
            "echo": {"kind": "echo"},
            "slow": {"kind": "echo", "delay": 0.2, "prefix": "slow: "},
            "down": {"kind": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "api_key": "k"},
        },
        "platforms": {"loop": {"kind": "loop"}},
        "channels": [
            {"name": "img", "match": {"prefix": ["img:", "图片："]}, "providers": ["slow"]},
            {"name": "broken", "match": {"chat": "dead"}, "providers": ["down"]},
            {"name": "grp", "match": {"direct": False}, "providers": ["echo"], "session": "thread"},
            {"name": "main", "match": {"platform": "loop", "chat": ["c1", "c2"]}, "providers": ["echo"]},
        ],
        "failover": {"attempts": 1},
        **extra,
    }
    return create_app(parse_config(data, {}, platforms=Registry("switchboard.platforms", {"loop": LoopPlatform})))


async def send(c: httpx.AsyncClient, url: str, **m) -> None:
    r = await c.post(f"{url}/hooks/loop", content=orjson.dumps(m))
    assert r.status_code == 200


async def delivered(event: str, n: int = 1) -> list[tuple[str, str, bool]]:
    """The deliveries of `event`, once at least `n` were made (at most 4 s)."""
    for _ in range(200):
        if len(LoopPlatform.delivered.get(event, [])) >= n:
            break
        await asyncio.sleep(0.02)
    return LoopPlatform.delivered.get(event, [])


async def sentinel(c: httpx.AsyncClient, url: str, n: int = 1) -> None:
    """Send one more real message (the same chat, a new id) and wait until it was answered.
    Answers are started in the order their messages came in, so whatever an earlier message
    would have caused has happened by then."""
    await send(c, url, id=f"sentinel-{n}", text=f"sentinel-{n}")
    assert await delivered(f"sentinel-{n}") == [(f"echo: sentinel-{n}", "c1", False)]


async def test_answer_once_even_when_delivered_twice_and_after_restart(tmp_path):
    async with serve_asgi(app(tmp_path)) as url, httpx.AsyncClient() as c:
        await send(c, url, id="e1", text="hello")
        await send(c, url, id="e1", text="hello")
        await delivered("e1")
        await sentinel(c, url, 1)
        assert LoopPlatform.delivered["e1"] == [("echo: hello", "c1", False)]
    async with serve_asgi(app(tmp_path)) as url, httpx.AsyncClient() as c:  # restart, same store
        await send(c, url, id="e1", text="hello")
        await sentinel(c, url, 2)
        assert LoopPlatform.delivered.get("e1", []) == []


async def test_commands_unsupported_and_unrouted(tmp_path):
    async with serve_asgi(app(tmp_path)) as url, httpx.AsyncClient() as c:
        await send(c, url, id="h", text="/help")
        await send(c, url, id="i", text="", kind="image")
        await send(c, url, id="x", text="hi", chat="elsewhere")
        assert "/clear" in (await delivered("h"))[0][0]
        assert "only read text" in (await delivered("i"))[0][0]
        assert "not connected" in (await delivered("x"))[0][0]


async def test_clear_forgets_history(tmp_path):
    def stored() -> int:
        return sqlite3.connect(f"{tmp_path}/d.db").execute("SELECT COUNT(*) FROM messages").fetchone()[0]

    async with serve_asgi(app(tmp_path)) as url, httpx.AsyncClient() as c:
        await send(c, url, id="a1", text="one")
        await delivered("a1")
        assert stored() == 2
        await send(c, url, id="a2", text="\\clear")
        assert "forgotten" in (await delivered("a2"))[0][0]
        assert stored() == 0


async def test_prefix_routes_and_is_stripped(tmp_path):
    async with serve_asgi(app(tmp_path)) as url, httpx.AsyncClient() as c:
        await send(c, url, id="p1", text="IMG: a cat")
        await send(c, url, id="p2", text="图片：一只猫")
        assert (await delivered("p1"))[0][0] == "slow: a cat"
        assert (await delivered("p2"))[0][0] == "slow: 一只猫"


async def test_failure_reaches_user_as_apology(tmp_path):
    async with serve_asgi(app(tmp_path)) as url, httpx.AsyncClient() as c:
        await send(c, url, id="f1", text="hi", chat="dead")
        text = (await delivered("f1"))[0][0]
        assert text.startswith("Sorry") and "Traceback" not in text and "127.0.0.1" not in text


async def test_stop_ends_a_running_answer(tmp_path):
    async with serve_asgi(app(tmp_path)) as url, httpx.AsyncClient() as c:
        await send(c, url, id="s1", text="img: " + " ".join(["word"] * 30))
        for _ in range(200):  # until the answer is streaming
            answer = getattr(LoopPlatform.jobs["s1"], "answer", None)
            if answer is not None and answer.text.startswith("slow: word"):
                break
            await asyncio.sleep(0.02)
        LoopPlatform.jobs["s1"].stop()
        ((text, _, stopped),) = await delivered("s1")
    assert stopped and text.startswith("slow:") and len(text.split()) < 30


async def test_group_thread_sessions_are_separate(tmp_path):
    async with serve_asgi(app(tmp_path)) as url, httpx.AsyncClient() as c:
        for i, thread in enumerate(["t1", "t1", "t2"]):
            await send(c, url, id=f"g{i}", text=f"m{i}", chat="room", direct=False, thread=thread)
            await delivered(f"g{i}")
    db = sqlite3.connect(f"{tmp_path}/d.db")
    convs = dict(db.execute("SELECT conversation, COUNT(*) FROM messages GROUP BY conversation").fetchall())
    assert convs == {"grp|loop|room/t1": 4, "grp|loop|room/t2": 2}


@pytest.mark.parametrize("body", [b"x" * 2_000_000])
async def test_hook_body_limit(tmp_path, body):
    async with serve_asgi(app(tmp_path)) as url, httpx.AsyncClient() as c:
        r = await c.post(f"{url}/hooks/loop", content=body)
        assert r.status_code == 413
        assert (await c.post(f"{url}/hooks/nope", content=b"{}")).status_code == 404
