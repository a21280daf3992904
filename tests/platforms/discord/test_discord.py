"""Discord through the real app: messages in over a fake Gateway (which drops, resumes and
invalidates sessions), answers out as the messages and edits its REST API recorded; `/ask`
through the Interactions endpoint with requests signed by PyNaCl."""

from __future__ import annotations

import time
from types import SimpleNamespace

import aiohttp
import pytest
from nacl.signing import SigningKey

from platforms.discord import DiscordPlatform
from proxy.config import parse_config
from proxy.errors import ConfigError
from tests.platforms.discord.discord_kit import answers, ask, config, running, signed
from tests.platforms.discord.fake_discord import BOT, FakeDiscord, message


@pytest.fixture
async def fake():
    async with FakeDiscord() as f:
        yield f


async def test_a_dm_is_answered_with_streamed_edits_in_one_reply(tmp_path, fake):
    async with running(tmp_path, fake, delay=0.05):
        await fake.connected()
        await fake.dispatch("MESSAGE_CREATE", message("one two three four five six", mid="3001"))
        assert await answers(fake, "echo: one two three four five six") == ["echo: one two three four five six"]
    [created] = fake.of("POST", "/channels/4000/messages")
    assert created["message_reference"]["message_id"] == "3001"
    assert created["allowed_mentions"] == {"parse": [], "replied_user": False}
    edits = [e["content"] for e in fake.of("PATCH")]
    assert len(edits) >= 2 and edits[-1] == "echo: one two three four five six" and edits[0].endswith(" …")
    assert fake.identifies[0]["intents"] == (1 << 0) | (1 << 9) | (1 << 12) | (1 << 15)


async def test_in_servers_only_mentions_and_replies_are_answered_and_bots_never(tmp_path, fake):
    async with running(tmp_path, fake):
        await fake.connected()
        guild = {"guild": "5000"}
        await fake.dispatch("MESSAGE_CREATE", message("just chatting", **guild))
        await fake.dispatch("MESSAGE_CREATE", message(f"<@{BOT}> what is up", mentions=[{"id": BOT}], **guild))
        await fake.dispatch("MESSAGE_CREATE", message("and then?", referenced_message={"author": {"id": BOT}}, **guild))
        await fake.dispatch(
            "MESSAGE_CREATE", message(f"<@{BOT}> hi", mentions=[{"id": BOT}], bot=True, author="2999", **guild)
        )
        await fake.dispatch("MESSAGE_CREATE", message("my own", author=BOT))
        await fake.dispatch("MESSAGE_CREATE", message("", attachments=[{"id": "1", "content_type": "image/png"}]))
        await fake.dispatch("MESSAGE_CREATE", message("sentinel"))
        said = await answers(fake, "echo: sentinel")
    assert sorted(said) == sorted(
        [  # answered concurrently: in any order
            "echo: what is up",
            "echo: and then?",
            "Sorry, I can only read text messages for now. Please send your question as text.",
            "echo: sentinel",
        ]
    )


async def test_a_dropped_connection_resumes_and_a_replayed_message_is_answered_once(tmp_path, fake):
    fake.replay_overlap = True  # the resume also replays the last event the bot handled
    async with running(tmp_path, fake, delay=0.05):
        await fake.connected()
        await fake.dispatch("MESSAGE_CREATE", message("before the drop"))
        await fake.wait(lambda: fake.of("POST"))  # its answer has begun streaming
        await fake.drop()  # mid-stream: the answer goes on over REST
        await fake.dispatch("MESSAGE_CREATE", message("while away"))  # missed: replayed on RESUME
        await fake.connected(2)
        said = await answers(fake, "echo: while away")
    assert said == ["echo: before the drop", "echo: while away"]
    assert len(fake.identifies) == 1 and fake.resumes[0]["session_id"] == "s1"
    assert fake.resumes[0]["seq"] == 2  # READY was 1, the first message 2: handled, then resumed after it


async def test_a_429_is_waited_out_and_long_answers_continue(tmp_path, fake):
    fake.limit("PATCH", retry_after=0.3)
    words = " ".join(f"word{i:04d}" for i in range(300))  # ~2,700 characters
    async with running(tmp_path, fake):
        await fake.connected()
        await fake.dispatch("MESSAGE_CREATE", message(words))
        await fake.wait(lambda: len(fake.texts) >= 2 and not any(t.endswith("…") for t in fake.texts.values()))
        said = [fake.texts[k] for k in sorted(fake.texts)]
    assert all(len(s) <= 2000 for s in said) and " ".join(said) == f"echo: {words}"


async def test_a_restart_answers_a_message_delivered_again_once(tmp_path, fake):
    again = message("only once", mid="3777")
    async with running(tmp_path, fake):
        await fake.connected()
        await fake.dispatch("MESSAGE_CREATE", again)
        await answers(fake, "echo: only once")
    async with running(tmp_path, fake):
        await fake.connected(2)
        await fake.dispatch("MESSAGE_CREATE", again)
        await fake.dispatch("MESSAGE_CREATE", message("sentinel"))
        said = await answers(fake, "echo: sentinel")
    assert said == ["echo: only once", "echo: sentinel"]


# -- Interactions ------------------------------------------------------------------------------


async def test_interactions_ping_signature_and_ask(tmp_path, fake):
    async with running(tmp_path, fake, gateway=False) as c:
        raw, headers = signed({"type": 1})
        pong = await c.post("/hooks/dc", content=raw, headers=headers)
        assert (pong.status_code, pong.json()) == (200, {"type": 1})
        raw, headers = signed(ask("forged"), signer=SigningKey(bytes(32)))
        assert (await c.post("/hooks/dc", content=raw, headers=headers)).status_code == 401
        raw, headers = signed(ask("stale"), ts=int(time.time()) - 3600)
        assert (await c.post("/hooks/dc", content=raw, headers=headers)).status_code == 401
        raw, headers = signed(ask("what is up"))
        deferred = await c.post("/hooks/dc", content=raw, headers=headers)
        assert (deferred.status_code, deferred.json()) == (200, {"type": 5})
        await fake.wait(lambda: fake.texts.get("@original:interaction-token-xyz") == "echo: what is up")
    assert fake.texts == {"@original:interaction-token-xyz": "echo: what is up"}  # nothing for the forgeries


async def test_setup_registers_ask(tmp_path, fake):
    adapter = parse_config(config(tmp_path, fake), {}).platforms["dc"]
    async with aiohttp.ClientSession() as session:
        platform = DiscordPlatform("dc", adapter.config, SimpleNamespace(http=session))  # type: ignore[arg-type]
        assert await platform.setup() == "/ask registered"
    assert fake.commands[0]["name"] == "ask" and fake.commands[0]["options"][0]["required"] is True


def test_a_public_key_that_is_not_one_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="public_key"):
        parse_config(config(tmp_path, FakeDiscord(), public_key="abc"), {})
