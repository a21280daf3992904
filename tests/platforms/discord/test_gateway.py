"""The Gateway protocol through the real app, against the fake gateway: RECONNECT and a
resumable INVALID_SESSION resume on READY's resume URL (closed with a code that keeps the
session), a zombie connection (heartbeats not acknowledged) is resumed, a heartbeat Discord asks
for is sent at once, fatal close codes are explained and not retried at once, an exhausted
session start limit is waited out; which messages reach the model, and how (the mention cut)."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from platforms.discord.api import DiscordAPI
from platforms.discord.gateway import INTENTS, Gateway
from tests.fakes.openai_upstream import FakeOpenAI
from tests.platforms.discord.discord_kit import answers, ask, running
from tests.platforms.discord.fake_discord import BOT, TOKEN, FakeDiscord, message


@pytest.fixture
async def fake():
    async with FakeDiscord() as f:
        yield f


async def test_reconnect_resumes_on_the_resume_url_keeping_the_session(tmp_path, fake):
    async with running(tmp_path, fake):
        await fake.connected()
        await fake.dispatch("MESSAGE_CREATE", message("before"))
        await answers(fake, "echo: before")
        await fake.send_op(7)  # RECONNECT
        await fake.connected(2)
        await fake.dispatch("MESSAGE_CREATE", message("after"))
        said = await answers(fake, "echo: after")
    assert said == ["echo: before", "echo: after"]
    assert fake.closes[0] not in (1000, 1001)  # those would have ended the session
    assert fake.paths == ["/gateway/", "/resume/"]  # READY's resume_gateway_url
    assert len(fake.identifies) == 1 and fake.resumes == [{"token": TOKEN, "session_id": "s1", "seq": 2}]


async def test_a_resumable_invalid_session_resumes(tmp_path, fake):
    async with running(tmp_path, fake):
        await fake.connected()
        await fake.send_op(9, True)
        await fake.connected(2)
        await fake.dispatch("MESSAGE_CREATE", message("still here"))
        assert await answers(fake, "echo: still here") == ["echo: still here"]
    assert len(fake.identifies) == 1 and fake.resumes[0]["session_id"] == "s1"


async def test_an_invalid_session_identifies_afresh_on_the_gateway_url(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(Gateway, "INVALID_SESSION_WAIT", (0.0, 0.1))
    async with running(tmp_path, fake):
        await fake.connected()
        await fake.send_op(9, False)
        await fake.wait(lambda: len(fake.identifies) == 2)
        await fake.dispatch("MESSAGE_CREATE", message("after"))
        assert await answers(fake, "echo: after") == ["echo: after"]
    assert fake.resumes == [] and fake.paths == ["/gateway/", "/gateway/"]


async def test_a_zombie_connection_is_closed_and_resumed(tmp_path, fake):
    fake.heartbeat_interval = 150  # ms
    fake.unacked = {1}  # the first connection's heartbeats go unanswered
    async with running(tmp_path, fake):
        await fake.connected(2)
        await fake.dispatch("MESSAGE_CREATE", message("alive"))
        assert await answers(fake, "echo: alive") == ["echo: alive"]
    assert fake.closes[0] not in (1000, 1001) and len(fake.identifies) == 1
    assert fake.resumes[0]["session_id"] == "s1"


async def test_a_heartbeat_discord_asks_for_is_sent_at_once_with_the_last_seq(tmp_path, fake):
    async with running(tmp_path, fake):
        await fake.connected()
        await fake.dispatch("MESSAGE_CREATE", message("one"))
        await answers(fake, "echo: one")
        await fake.request_heartbeat()
        await fake.wait(lambda: bool(fake.heartbeats))
    assert fake.heartbeats[-1] == 2  # READY was 1, the message 2


async def test_a_fatal_close_code_is_explained_without_the_token(tmp_path, fake, caplog, monkeypatch):
    monkeypatch.setattr(Gateway, "FATAL_PAUSE", 0.2)
    fake.close_on_identify = 4014
    with caplog.at_level(logging.INFO):
        async with running(tmp_path, fake) as c:
            await fake.connected()  # the second IDENTIFY, once the pause is over
            await fake.dispatch("MESSAGE_CREATE", message("fixed"))
            await answers(fake, "echo: fixed")
            ready = (await c.get("/readyz")).json()
    assert fake.closes[0] == 4014 and len(fake.identifies) == 2
    [explained] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "4014" in explained and "Message Content Intent" in explained
    assert TOKEN not in caplog.text
    assert "connected" in str(ready)


async def test_after_a_fatal_close_the_next_connection_waits(fake):
    fake.close_on_identify = 4004
    async with aiohttp.ClientSession() as http:

        async def ignore(event: str, d: dict[str, object]) -> None: ...

        gateway = Gateway("discord t", DiscordAPI(lambda: http, fake.api, TOKEN), lambda: http, TOKEN, INTENTS, ignore)
        with pytest.raises(ConnectionError, match="4004"):
            await gateway.connection(lambda: None)
        with pytest.raises(TimeoutError):  # FATAL_PAUSE (10 minutes): no IDENTIFY meanwhile
            await asyncio.wait_for(gateway.connection(lambda: None), 0.3)
    assert fake.connections == 1


async def test_an_exhausted_session_start_limit_is_waited_out(tmp_path, fake, caplog):
    fake.session_starts = {"total": 1000, "remaining": 0, "reset_after": 100}  # ms
    with caplog.at_level(logging.WARNING):
        async with running(tmp_path, fake):
            await fake.connected()
    assert "no session starts left" in caplog.text


async def test_mentions_are_cut_before_the_model_sees_them(tmp_path, fake):
    guild = {"guild": "5000"}
    async with FakeOpenAI() as up, running(tmp_path, fake, up.base_url):
        await fake.connected()
        await fake.dispatch("MESSAGE_CREATE", message("not for us", **guild))
        await fake.dispatch("MESSAGE_CREATE", message(f"<@{BOT}> what is up", mentions=[{"id": BOT}], **guild))
        await fake.dispatch("MESSAGE_CREATE", message(f"and <@!{BOT}> then", author="2200", **guild))
        await fake.dispatch("MESSAGE_CREATE", message("from a bot", bot=True, author="2999"))
        said = await answers(fake, "upstream: what is up", "upstream: and then")
        asked = [r.json["messages"][-1]["content"] for r in up.chat_requests()]
    assert sorted(asked) == ["and then", "what is up"]  # nothing else reached the model
    assert sorted(said) == ["upstream: and then", "upstream: what is up"]


async def test_ask_over_the_gateway_is_deferred_by_http_and_answered_once(tmp_path, fake):
    async with running(tmp_path, fake, public_key=""):  # no Interactions Endpoint URL: they come this way
        await fake.connected()
        await fake.dispatch("INTERACTION_CREATE", ask("over the gateway", iid="8101", token="gw-token"))
        await fake.wait(lambda: fake.texts.get("@original:gw-token") == "echo: over the gateway")
        await fake.drop()  # the resume replays the interaction: already claimed
        fake.replay_overlap = True
        await fake.connected(2)
        await fake.dispatch("INTERACTION_CREATE", {**ask("x", iid="8102", token="t2"), "data": {"name": "other"}})
        await fake.wait(lambda: len(fake.callbacks) == 2)
    assert fake.callbacks == [{"type": 5}, {"type": 4, "data": {"content": "Unknown command.", "flags": 64}}]
    assert fake.texts == {"@original:gw-token": "echo: over the gateway"}
