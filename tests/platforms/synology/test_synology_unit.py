"""Synology adapter on recorded form bodies with a tiny fake ctx: token, allowlist, dedupe, parse,
code refusal, and where a reply would go."""

from __future__ import annotations

import dataclasses
from typing import Any

import aiohttp
import pydantic
import pytest

from platforms.synology import SynologyConfig, SynologyPlatform
from proxy.errors import DeliveryError, RequestError, VerificationError
from proxy.types import Inbound, WebRequest
from tests.platforms.fake_ctx import FakeCtx, WholeAnswer
from tests.platforms.synology.synology_kit import BOT_TOKEN, HOOK_TOKEN, FakeNAS, form


def adapter(**config: Any) -> tuple[SynologyPlatform, FakeCtx]:
    ctx = FakeCtx()
    settings = {"tokens": [BOT_TOKEN, HOOK_TOKEN], "api_base": "https://nas.local:5001", "bot_token": BOT_TOKEN}
    return SynologyPlatform("nas", SynologyConfig(**{**settings, **config}), ctx), ctx  # type: ignore[arg-type]


def request(body: bytes, method: str = "POST") -> WebRequest:
    return WebRequest(method, "/hooks/nas", {"content-type": "application/x-www-form-urlencoded"}, {}, body)


async def test_bot_dm_is_parsed_and_acked_with_empty_json():
    syno, ctx = adapter()
    resp = await syno.handle(request(form("bot_dm")))
    assert (resp.status, resp.body, resp.content_type) == (200, b"{}", "application/json")
    (msg,) = ctx.submitted
    assert (msg.event_id, msg.chat_id, msg.user_id, msg.user_name, msg.direct) == (
        "21474836481",
        "dm:4",
        "4",
        "ada",
        True,
    )
    assert msg.text == "gpt: what is a NAS?" and msg.reply_to == {"channel": None, "user": "4"}


async def test_outgoing_webhook_loses_its_trigger_word():
    syno, ctx = adapter()
    await syno.handle(request(form("outgoing_webhook")))
    (msg,) = ctx.submitted
    assert (msg.text, msg.chat_id, msg.direct) == ("图片：一只狐狸", "3", False)


@pytest.mark.parametrize("token", ["", "x", BOT_TOKEN[:-1], BOT_TOKEN + "x", BOT_TOKEN.lower()])
async def test_wrong_token_is_refused_and_nothing_recorded(token):
    syno, ctx = adapter()
    with pytest.raises(VerificationError):
        await syno.handle(request(form("bot_dm", token=token)))
    assert ctx.claimed == set() and ctx.submitted == []


async def test_single_token_config_and_a_token_is_required():
    syno, ctx = adapter(tokens=[], token=HOOK_TOKEN)
    await syno.handle(request(form("outgoing_webhook")))
    with pytest.raises(VerificationError):
        await syno.handle(request(form("bot_dm")))
    assert len(ctx.submitted) == 1
    with pytest.raises(pydantic.ValidationError, match="set `token`"):
        SynologyConfig(token="", tokens=[])


async def test_allow_users_ignores_others_quietly():
    syno, ctx = adapter(allow_users=["5"])
    assert (await syno.handle(request(form("bot_dm")))).status == 200
    await syno.handle(request(form("outgoing_webhook")))
    assert [m.user_id for m in ctx.submitted] == ["5"]


async def test_dedupe_on_post_id_else_user_and_timestamp():
    syno, ctx = adapter()
    await syno.handle(request(form("bot_dm")))
    await syno.handle(request(form("bot_dm")))
    await syno.handle(request(form("bot_dm", post_id="", timestamp="1700000000999")))
    await syno.handle(request(form("bot_dm", post_id="", timestamp="1700000000999")))
    assert [m.event_id for m in ctx.submitted] == ["21474836481", "4:1700000000999"]


@pytest.mark.parametrize("text", ["python: print(1)", "  PYTHON : 1", "bash:ls", "Bash：rm -rf /", "python：x"])
async def test_code_is_refused_not_submitted(text):
    syno, ctx = adapter()
    await syno.handle(request(form("bot_dm", text=text)))
    assert ctx.submitted == [] and ctx.spawned == ["refuse:21474836481"]


async def test_text_that_merely_mentions_python_is_answered():
    syno, ctx = adapter()
    await syno.handle(request(form("bot_dm", text="how do I learn python: any tips?")))
    assert len(ctx.submitted) == 1 and ctx.spawned == []


async def test_malformed_requests():
    syno, _ = adapter()
    with pytest.raises(RequestError):
        await syno.handle(request(b"\xff\xfe token"))
    with pytest.raises(RequestError):
        await syno.handle(request(form("bot_dm", user_id="")))
    with pytest.raises(RequestError) as e:
        await syno.handle(request(b"", method="GET"))
    assert e.value.status == 405


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user_id", str(2**64)),  # beyond 64 bits: acked, then the bot API payload failed (TypeError)
        ("user_id", str(2**63)),
        ("user_id", "4a"),
        ("user_id", "+4"),  # int() would take these three
        ("user_id", " 4"),
        ("user_id", "٤"),  # Arabic-Indic four
        ("channel_id", "3" * 25),
        ("channel_id", "general"),
    ],
)
async def test_ids_that_are_not_64_bit_numbers_are_400_before_the_ack(field: str, value: str):
    """Regression (issue 9): validated at the edge, so nothing is claimed or submitted."""
    syno, ctx = adapter()
    name = "bot_dm" if field == "user_id" else "outgoing_webhook"
    with pytest.raises(RequestError) as e:
        await syno.handle(request(form(name, **{field: value})))
    assert e.value.status == 400 and field in e.value.message
    assert ctx.submitted == [] and ctx.claimed == set() and ctx.spawned == []
    ok = await syno.handle(request(form(name, **{field: str(2**63 - 1)})))
    assert ok.status == 200 and len(ctx.submitted) == 1
    if field == "user_id":
        assert syno._target(ctx.submitted[0], {"text": "hi"})[1]["user_ids"] == [2**63 - 1]


async def test_reply_targets_bot_api_with_quoted_token_or_the_channel_webhook():
    syno, ctx = adapter(incoming_url="https://nas.local:5001/hook-default", incoming_urls={"3": "https://nas/hook-3"})
    await syno.handle(request(form("bot_dm")))
    await syno.handle(request(form("outgoing_webhook")))
    dm, channel = ctx.submitted
    url, payload = syno._target(dm, {"text": "hi"})
    assert url == (
        "https://nas.local:5001/webapi/entry.cgi?api=SYNO.Chat.External&method=chatbot&version=2"
        f"&token=%22{BOT_TOKEN}%22"
    )
    assert payload == {"text": "hi", "user_ids": [4]}
    assert syno._target(channel, {"text": "hi"}) == ("https://nas/hook-3", {"text": "hi"})
    other = Inbound("nas", "p", "9", "5", "x", direct=False, reply_to={"channel": "9", "user": "5"})
    assert syno._target(other, {"text": "hi"})[0] == "https://nas.local:5001/hook-default"


async def test_no_reply_route_is_a_delivery_error_without_secrets():
    syno, ctx = adapter(api_base="", bot_token="")
    await syno.handle(request(form("bot_dm")))
    with pytest.raises(DeliveryError) as e:
        syno._target(ctx.submitted[0], {"text": "hi"})
    assert BOT_TOKEN not in str(e.value)


async def test_a_recovered_long_answer_sends_only_the_parts_not_sent_yet():
    words = " ".join(f"w{i:03d}" for i in range(100))  # three parts of at most 200 characters
    async with FakeNAS() as nas, aiohttp.ClientSession() as http:
        sy, ctx = adapter(api_base=nas.base, text_limit=200, send_interval=0)
        ctx.http = http  # type: ignore[attr-defined]
        msg = Inbound("nas", "p1", "dm:4", "4", "q", reply_to={"channel": None, "user": "4"})
        await sy.deliver(msg, WholeAnswer(words))
        parts = [s["payload"]["text"] for s in nas.sent]
        assert len(parts) == 3 and ctx.notes["p1"] == {"sent": 2}
        # as if the process died after the first part: the next one sends the other two
        await sy.deliver(dataclasses.replace(msg, recovered={"sent": 1}), WholeAnswer(words))
        assert [s["payload"]["text"] for s in nas.sent[3:]] == parts[1:]
