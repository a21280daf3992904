"""How answers reach Telegram, on the adapter itself against the fake Bot API: a recovered answer
edits the placeholder the dead attempt had sent (and sends only the parts it had not), images go
by sendPhoto, a 429 on a new message is waited out without a second one, forum topics are kept
and supergroup reply threads are not (Telegram refuses those as "message thread not found")."""

from __future__ import annotations

import dataclasses

import aiohttp
import pytest

from platforms.telegram import TelegramPlatform
from platforms.telegram.message import Me, parse_update
from proxy.config import parse_config
from proxy.types import Inbound
from tests.platforms.fake_ctx import FakeCtx, Scripted
from tests.platforms.telegram.fake_bot_api import BOT_ID, BOT_NAME, FakeBotAPI, update
from tests.platforms.telegram.telegram_kit import config


@pytest.fixture
async def api():
    async with FakeBotAPI() as fake:
        yield fake


@pytest.fixture
async def adapter(tmp_path, api):
    block = parse_config(config(tmp_path, api, update_interval=0), {}).platforms["tg"].config
    ctx = FakeCtx()
    async with aiohttp.ClientSession() as http:
        ctx.http = http  # type: ignore[attr-defined]
        yield TelegramPlatform("tg", block, ctx), ctx  # type: ignore[arg-type]


def private(event: str = "u:1") -> Inbound:
    return Inbound("tg", event, "42", "42", "hi", direct=True, reply_to={"chat": 42, "message": 9, "group": False})


async def test_the_placeholder_is_noted_and_a_recovered_answer_edits_it(adapter, api):
    tg, ctx = adapter
    await tg.deliver(private(), Scripted(["first ", "try"]))
    [mid] = api.texts
    assert ctx.notes == {"u:1": {"message": mid}}
    recovered = dataclasses.replace(private(), recovered={"message": mid})
    await tg.deliver(recovered, Scripted(["the whole answer"]))
    assert len(api.of("sendMessage")) == 1  # no second message
    assert api.texts == {mid: "the whole answer"}


async def test_a_recovered_long_answer_sends_only_the_parts_not_sent_yet(adapter, api):
    tg, ctx = adapter
    words = " ".join(f"w{i:04d}" for i in range(1000))  # 5,999 characters: two parts
    await tg.deliver(private(), Scripted([words]))
    first, second = sorted(api.texts)
    assert ctx.notes["u:1"] == {"message": first, "sent": 2}
    await tg.deliver(dataclasses.replace(private(), recovered={"message": first, "sent": 2}), Scripted([words]))
    assert len(api.of("sendMessage")) == 2
    assert f"{api.texts[first]} {api.texts[second]}" == words


async def test_images_go_by_send_photo_and_a_non_url_image_is_explained(adapter, api):
    tg, _ = adapter
    await tg.deliver(private(), Scripted(["a cat"], images=("https://img.example/cat.png", "data:image/png;base64,x")))
    assert [p["photo"] for p in api.of("sendPhoto")] == ["https://img.example/cat.png"]
    assert api.sent()[0] == "a cat" and len(api.sent()) == 3  # the answer, the photo, the explanation
    assert "data:image" not in api.sent()[2]


async def test_a_429_on_a_new_message_is_waited_out_and_sends_it_once(adapter, api):
    tg, _ = adapter
    api.fail("sendMessage", status=429, retry_after=0)  # Telegram's whole seconds; 0 keeps the test quick
    api.fail("sendMessage", status=429, retry_after=0)
    await tg.deliver(private(), Scripted(["patience"]))
    assert api.sent() == ["patience"]
    assert len(api.of("sendMessage")) == 3  # two refused, one made


async def test_a_failed_send_names_the_method_but_never_the_token(adapter, api):
    from proxy.errors import DeliveryError

    tg, _ = adapter
    api.fail("sendMessage", status=403, times=1)
    with pytest.raises(DeliveryError) as e:
        await tg.deliver(private(), Scripted(["x"]))
    assert "sendMessage" in str(e.value) and "TEST-token" not in str(e.value) and "/bot" not in str(e.value)


async def test_forum_topics_are_kept_and_supergroup_reply_threads_are_not(adapter, api):
    tg, _ = adapter
    me = Me(BOT_ID, BOT_NAME)
    bots = {"message_id": 3, "from": {"id": BOT_ID, "is_bot": True, "first_name": "Switch"}, "chat": {"id": -100}}
    group = {"chat": -100, "kind": "supergroup", "reply_to_message": bots}
    in_topic = parse_update("tg", update("in a topic", message_thread_id=7, is_topic_message=True, **group), me)
    in_reply = parse_update("tg", update("a plain reply", message_thread_id=3, **group), me)  # no topics here
    assert in_topic is not None and in_reply is not None
    assert (in_topic.thread_id, in_reply.thread_id) == ("7", None)
    await tg.deliver(in_topic, Scripted(["topical"]))
    await tg.deliver(in_reply, Scripted(["plain"]))
    topic_send, reply_send = api.of("sendMessage")
    assert topic_send["message_thread_id"] == 7 and "message_thread_id" not in reply_send
    assert reply_send["reply_parameters"]["message_id"] == in_reply.reply_to["message"]


async def test_markdown_v2_telegram_cannot_parse_is_sent_again_as_plain_text(tmp_path, api):
    block = parse_config(config(tmp_path, api, update_interval=0, parse_mode="MarkdownV2"), {}).platforms["tg"].config
    ctx = FakeCtx()
    api.unparsable = 3  # the placeholder, the streamed edit and the last one
    async with aiohttp.ClientSession() as http:
        ctx.http = http  # type: ignore[attr-defined]
        await TelegramPlatform("tg", block, ctx).deliver(private(), Scripted(["Use **x_1** (not y)."]))  # type: ignore[arg-type]
    assert api.sent() == ["Use **x_1** (not y)."]
    edits = api.of("editMessageText")
    assert [e.get("parse_mode") for e in edits] == ["MarkdownV2", None, "MarkdownV2", None]
    assert edits[2]["text"] == r"Use *x\_1* \(not y\)\." and edits[3]["text"] == "Use **x_1** (not y)."
