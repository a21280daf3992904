"""Recovery of claimed, unanswered platform messages, in process: what a dead owner left on the
claim (a finished answer, notes), what is not resumed (expired target, too old, nothing stored),
a shutdown that cuts an answer off, and two instances sharing a Redis store (the heartbeat keeps
a long answer its owner's)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
from starlette.applications import Starlette

from proxy.app import create_app
from proxy.claims import claim_key
from proxy.config import parse_config
from proxy.contracts import AdapterConfig, Answer, Platform
from proxy.engine import open_store
from proxy.registry import Registry
from proxy.types import Inbound, Message, WebRequest, WebResponse
from tests.servers import serve_asgi


class NoteConfig(AdapterConfig):
    kind: Literal["note"] = "note"


class NotePlatform(Platform):
    """Records deliveries (and the notes it saw) in the class; `handle` is never used here.
    Messages in chat "gone" can no longer be answered."""

    config_model = NoteConfig
    delivered: list[tuple[str, str, Any]] = []

    def verify(self, request: WebRequest) -> None:
        return None  # a test platform: every request is trusted

    async def receive(self, request: WebRequest) -> WebResponse:
        m = orjson.loads(request.body)
        if await self.ctx.claim(m["id"]):
            self.ctx.submit(self, Inbound(self.name, m["id"], "c1", "u1", m["text"]))
        return WebResponse(200, b"ok")

    def resumable(self, msg: Inbound, claimed_at: float) -> bool:
        return msg.chat_id != "gone"

    async def deliver(self, msg: Inbound, answer: Answer) -> None:
        await self.ctx.note(msg, started=True)
        async for _ in answer:
            pass
        NotePlatform.delivered.append((msg.event_id, answer.text, msg.recovered))


def settings(store: str, **server: Any) -> Any:
    data = {
        "server": {"claim_lease": 0.5, "drain_seconds": 0.2, **server},
        "store": {"url": store},
        "providers": {"echo": {"kind": "echo"}, "slow": {"kind": "echo", "delay": 0.3}},
        "platforms": {"n": {"kind": "note"}},
        "channels": [
            {"name": "slow", "match": {"prefix": "slow:"}, "providers": ["slow"]},
            {"name": "main", "providers": ["echo"]},
        ],
    }
    return parse_config(data, {}, platforms=Registry("switchboard.platforms", {"note": NotePlatform}))


@asynccontextmanager
async def running(store: str, **server: Any) -> AsyncIterator[Starlette]:
    app = create_app(settings(store, **server))
    async with serve_asgi(app):
        yield app


def payload(event_id: str, text: str, *, chat: str = "c1", at: float | None = None, **more: Any) -> str:
    inbound = {"platform": "n", "event_id": event_id, "chat_id": chat, "user_id": "u1", "text": text,
               "kind": "text", "direct": True, "thread_id": None, "user_name": None, "reply_to": None,
               "extra_keys": []}  # fmt: skip
    return orjson.dumps({"inbound": inbound, "at": time.time() if at is None else at, "notes": {}, **more}).decode()


async def left_by_a_dead_process(store_url: str, *claims: tuple[str, str | None]) -> None:
    store = open_store(store_url)
    await store.open()
    try:
        for key, body in claims:
            await store.claim_lease(claim_key("n", key), owner="dead", lease=60, ttl=3600, payload=body)
    finally:
        await store.close()


async def until_delivered(n: int) -> list[tuple[str, str, Any]]:
    for _ in range(500):
        if len(NotePlatform.delivered) >= n:
            break
        await asyncio.sleep(0.01)
    return NotePlatform.delivered


def transcript(db: Path) -> list[tuple[str, Any]]:
    rows = sqlite3.connect(db).execute("SELECT body FROM messages ORDER BY id").fetchall()
    return [(m["r"], m["c"]) for m in (orjson.loads(r[0]) for r in rows)]


def post(event_id: str, text: str) -> WebRequest:
    return WebRequest("POST", "/hooks/n", {}, {}, orjson.dumps({"id": event_id, "text": text}))


@pytest.fixture(autouse=True)
def _reset() -> None:
    NotePlatform.delivered = []


@pytest.mark.parametrize("recorded", [False, True], ids=["crash-before-record", "crash-after-record"])
async def test_a_finished_answer_is_delivered_not_generated_again(tmp_path: Path, recorded: bool):
    url = f"sqlite:///{tmp_path}/r.db"
    done = payload("e1", "slow: question", answer="stored answer", notes={"placeholder": "ts1"})
    await left_by_a_dead_process(url, ("e1", done))
    if recorded:  # the dead process wrote the transcript, then died before delivering
        store = open_store(url)
        await store.open()
        await store.append("slow|n|c1/u1", [Message("user", "question"), Message("assistant", "stored answer")])
        await store.close()
    async with running(url):
        assert await until_delivered(1) == [("e1", "stored answer", {"placeholder": "ts1"})]
    assert transcript(tmp_path / "r.db") == [("user", "question"), ("assistant", "stored answer")]


async def test_what_cannot_be_resumed_is_logged_and_settled(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    url = f"sqlite:///{tmp_path}/r.db"
    await left_by_a_dead_process(
        url,
        ("gone", payload("gone", "hi", chat="gone")),  # the platform can no longer reply
        ("old", payload("old", "hi", at=time.time() - 7200)),  # older than recover_within
        ("junk", '{"inbound": {"platform": "nope"}}'),  # a platform not running
        ("bare", None),  # claimed, never submitted (an ignored event)
        ("fatal", payload("fatal", "hi", attempts=3)),  # every process answering it died
        ("ok", payload("ok", "hello")),
    )
    with caplog.at_level(logging.INFO, "switchboard.recovery"):
        async with running(url, recover_within=3600):
            assert await until_delivered(1) == [("ok", "echo: hello", None)]
            for _ in range(200):
                if sum("will not be" in r.message for r in caplog.records) >= 4:
                    break
                await asyncio.sleep(0.01)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 4 and all("will not be" in w for w in warned)
    assert any("seen:n:fatal" in w and "3 attempts" in w for w in warned)
    assert any("seen:n:gone" in w and "can no longer reply" in w for w in warned)
    assert any("seen:n:old" in w and "recover_within" in w for w in warned)
    assert any("seen:n:junk" in w and "not running" in w for w in warned)
    rows = sqlite3.connect(tmp_path / "r.db").execute("SELECT k, done FROM claims ORDER BY k").fetchall()
    assert all(done == 1 for _, done in rows) and len(rows) == 6


async def test_an_answer_cut_off_by_shutdown_is_answered_whole_by_the_next_start(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/r.db"
    words = " ".join(f"w{i}" for i in range(12))
    async with running(url) as app:
        await app.state.hooks.platforms["n"].handle(post("s1", f"slow: {words}"))
        await asyncio.sleep(0.5)  # a few words in; shutdown drains 0.2 s, then cuts it off
    assert NotePlatform.delivered == []
    async with running(url):
        ((event, text, notes),) = await until_delivered(1)
    assert (event, text, notes) == ("s1", f"echo: {words}", {"started": True})
    assert transcript(tmp_path / "r.db") == [("user", words), ("assistant", f"echo: {words}")]


async def test_two_instances_on_redis_answer_a_long_message_once(redis_url: str, caplog: pytest.LogCaptureFixture):
    url = redis_url + "?prefix=two-instances"
    words = " ".join(f"w{i}" for i in range(8))  # ~2 s of answer: four leases long
    with caplog.at_level(logging.INFO, "switchboard.recovery"):
        async with running(url) as a, running(url):  # the other instance sweeps every 0.25 s
            await a.state.hooks.platforms["n"].handle(post("long", f"slow: {words}"))
            await until_delivered(1)
    assert NotePlatform.delivered == [("long", f"echo: {words}", None)]
    assert not [r for r in caplog.records if "answering" in r.getMessage()]  # never taken over
