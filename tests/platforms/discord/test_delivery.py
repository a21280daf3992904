"""How answers reach Discord: empty rate-limit buckets waited for (no request earns a 429), a
429 on a post waited out without a second message, a recovered answer edits the message the dead
attempt had posted, images as links, `/ask` answered by editing the original response with
follow-ups for later parts, a repeated interaction answered once, and interaction tokens kept
out of logs; requests signed by PyNaCl, checked by our `cryptography` code."""

from __future__ import annotations

import dataclasses
import logging

import aiohttp
import pytest

from platforms.discord import DiscordPlatform
from proxy.config import parse_config
from proxy.types import Inbound
from tests.fakes.openai_upstream import FakeOpenAI
from tests.platforms.discord.discord_kit import answers, ask, config, running, signed
from tests.platforms.discord.fake_discord import APP, FakeDiscord, message
from tests.platforms.fake_ctx import FakeCtx, Scripted


@pytest.fixture
async def fake():
    async with FakeDiscord() as f:
        yield f


@pytest.fixture
async def adapter(tmp_path, fake):
    block = parse_config(config(tmp_path, fake, update_interval=0), {}).platforms["dc"].config
    ctx = FakeCtx()
    async with aiohttp.ClientSession() as http:
        ctx.http = http  # type: ignore[attr-defined]
        yield DiscordPlatform("dc", block, ctx), ctx  # type: ignore[arg-type]


def dm(mid: str = "3001") -> Inbound:
    return Inbound("dc", f"m:{mid}", "4000", "2100", "hi", direct=True, reply_to={"channel": "4000", "message": mid})


async def test_an_empty_bucket_is_waited_for_instead_of_earning_a_429(tmp_path, fake):
    fake.empty_bucket("PATCH", 0.1)  # every edit empties the edit bucket for 0.1 s
    async with running(tmp_path, fake, delay=0.03, update_interval=0):
        await fake.connected()
        await fake.dispatch("MESSAGE_CREATE", message("one two three four five six"))
        said = await answers(fake, "echo: one two three four five six")
    assert said == ["echo: one two three four five six"]
    assert len(fake.of("PATCH")) >= 2 and fake.too_soon == []


async def test_a_429_on_the_first_message_is_waited_out_and_posts_once(tmp_path, fake):
    fake.limit("POST", retry_after=0.1, times=2)
    async with running(tmp_path, fake):
        await fake.connected()
        await fake.dispatch("MESSAGE_CREATE", message("patience"))
        assert await answers(fake, "echo: patience") == ["echo: patience"]
    assert len(fake.of("POST")) == 3  # two refused, one made


async def test_the_message_is_noted_and_a_recovered_answer_edits_it(adapter, fake):
    dc, ctx = adapter
    await dc.deliver(dm(), Scripted(["first ", "try"]))
    [mid] = [k for k in fake.texts]
    assert ctx.notes == {"m:3001": {"message": mid}}
    recovered = dataclasses.replace(dm(), recovered={"message": mid})
    await dc.deliver(recovered, Scripted(["the whole answer"], images=("https://img.example/a.png",)))
    assert len(fake.of("POST")) == 1  # no second message
    assert fake.texts == {mid: "the whole answer\nhttps://img.example/a.png"}


async def test_a_recovered_long_answer_posts_only_the_parts_not_posted_yet(adapter, fake):
    dc, ctx = adapter
    words = " ".join(f"w{i:03d}" for i in range(500))  # 2,499 characters: two parts
    await dc.deliver(dm(), Scripted([words]))
    first, second = sorted(fake.texts)
    assert ctx.notes["m:3001"] == {"message": first, "sent": 2}
    await dc.deliver(dataclasses.replace(dm(), recovered={"message": first, "sent": 2}), Scripted([words]))
    assert len(fake.of("POST")) == 2 and " ".join(fake.texts[k] for k in (first, second)) == words


async def test_ask_edits_the_original_response_then_follows_up(tmp_path, fake):
    long = " ".join(f"w{i:03d}" for i in range(450))  # echoed: over 2,000 characters
    async with running(tmp_path, fake, gateway=False) as c:
        raw, headers = signed(ask(long))
        deferred = await c.post("/hooks/dc", content=raw, headers=headers)
        assert deferred.json() == {"type": 5}
        await fake.wait(lambda: len(fake.texts) == 2 and not any(t.endswith("…") for t in fake.texts.values()))
    original = fake.texts.pop("@original:interaction-token-xyz")
    [follow_up] = fake.texts.values()
    assert len(original) <= 2000 and f"{original} {follow_up}" == f"echo: {long}"
    assert fake.of("POST") == [{"content": follow_up, "allowed_mentions": {"parse": [], "replied_user": False}}]
    assert fake.calls[-1][1] == f"/webhooks/{APP}/interaction-token-xyz"


async def test_a_repeated_interaction_is_answered_once_and_unknown_commands_politely(tmp_path, fake):
    async with FakeOpenAI() as up, running(tmp_path, fake, up.base_url, gateway=False) as c:
        for _ in range(2):
            raw, headers = signed(ask("once"))
            assert (await c.post("/hooks/dc", content=raw, headers=headers)).json() == {"type": 5}
        raw, headers = signed({**ask("x", iid="8002"), "data": {"name": "other", "type": 1}})
        other = (await c.post("/hooks/dc", content=raw, headers=headers)).json()
        await fake.wait(lambda: fake.texts.get("@original:interaction-token-xyz") == "upstream: once")
        asked = len(up.chat_requests())
    assert asked == 1 and other["type"] == 4 and other["data"]["flags"] == 64  # ephemeral


async def test_unsigned_requests_are_refused_and_without_a_public_key_there_is_no_endpoint(tmp_path, fake):
    async with running(tmp_path, fake, gateway=False) as c:
        raw, headers = signed({"type": 1})
        assert (await c.post("/hooks/dc", content=raw, headers={"Content-Type": "application/json"})).status_code == 401
        tampered = raw.replace(b"1", b"2")
        assert (await c.post("/hooks/dc", content=tampered, headers=headers)).status_code == 401
    async with running(tmp_path, fake, gateway=False, public_key="") as c:
        raw, headers = signed({"type": 1})
        assert (await c.post("/hooks/dc", content=raw, headers=headers)).status_code == 403


async def test_an_interaction_token_never_reaches_the_logs(tmp_path, fake, caplog):
    fake.dead_tokens.add("secret-token-abc")
    with caplog.at_level(logging.INFO):  # (at DEBUG, aiosqlite logs SQL parameters: every stored text)
        async with running(tmp_path, fake, gateway=False) as c:
            raw, headers = signed(ask("hello", token="secret-token-abc"))
            assert (await c.post("/hooks/dc", content=raw, headers=headers)).json() == {"type": 5}
            await fake.wait(lambda: any("10015" in r.getMessage() or "404" in r.getMessage() for r in caplog.records))
    assert "404" in caplog.text and "secret-token-abc" not in caplog.text
