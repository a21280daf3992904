"""DingTalk adapter on recorded payloads with a tiny fake ctx: verify, parse, dedupe, webhook check."""

from __future__ import annotations

import dataclasses
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from platforms.dingtalk import DingTalkConfig, DingTalkPlatform, parse_webhook, sign
from proxy.errors import RequestError, VerificationError
from proxy.types import WebRequest
from tests.platforms.dingtalk.dingtalk_kit import REAL_WEBHOOK, SECRET, FakeWebhook, now_ms, payload, signed_headers
from tests.platforms.fake_ctx import FakeCtx, WholeAnswer


def adapter(**config: Any) -> tuple[DingTalkPlatform, FakeCtx]:
    ctx = FakeCtx()
    return DingTalkPlatform("ding", DingTalkConfig(app_secret=SECRET, **config), ctx), ctx


def request(body: dict[str, Any] | bytes, headers: dict[str, str] | None = None) -> WebRequest:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return WebRequest("POST", "/hooks/ding", headers if headers is not None else signed_headers(), {}, raw)


def test_sign_follows_the_documented_algorithm():
    # computed independently: printf '1700000000000\ndt-app-secret-123' | openssl dgst -sha256 -hmac ... -binary | base64
    assert sign(SECRET, "1700000000000") == signed_headers(1700000000000)["sign"]
    assert sign(SECRET, "1700000000000") == "YifTIonDScTocPFOmiycRCIHQVwj28SQ7nsiKbmc9GM="


async def test_direct_text_is_parsed():
    dt, ctx = adapter()
    resp = await dt.handle(request(payload("text_direct")))
    assert (resp.status, orjson.loads(resp.body)) == (200, {"msgtype": "empty"})
    (msg,) = ctx.submitted
    assert (msg.event_id, msg.chat_id, msg.user_id) == (
        "msgVnt0b5nLhY3tq+9KDbzZ3Q==",
        "cidXk3bX9Pq1aQ5dVw8zF2lGJ0Q==",
        "manager4411",
    )
    assert (msg.text, msg.kind, msg.direct, msg.user_name) == (
        "What is the capital of France?",
        "text",
        True,
        "Ada Lovelace",
    )
    assert msg.reply_to.webhook == URL(REAL_WEBHOOK) and msg.reply_to.mention is None


async def test_group_text_loses_leading_space_and_bot_mention():
    dt, ctx = adapter()
    await dt.handle(request(payload("text_group")))
    (msg,) = ctx.submitted
    assert (msg.text, msg.direct, msg.chat_id) == ("summarise the release notes", False, "cidR7aWq2Lm8yT0vP4kH6nC1bE==")
    assert msg.reply_to.mention == "staff0815"


async def test_sender_outside_the_org_falls_back_to_sender_id():
    dt, ctx = adapter()
    body = payload("text_group")
    del body["senderStaffId"]
    await dt.handle(request(body))
    (msg,) = ctx.submitted
    assert msg.user_id == "$:LWCP_v1:$9sJ2LwpXf6Uq1vQm0cR8dH3==" and msg.reply_to.mention is None


async def test_picture_and_rich_text():
    dt, ctx = adapter()
    await dt.handle(request(payload("picture")))
    await dt.handle(request(payload("rich_text")))
    pictures_only = payload("rich_text", msgId="r2", content={"richText": [{"type": "picture", "downloadCode": "x"}]})
    await dt.handle(request(pictures_only))
    await dt.handle(request(payload("picture", msgId="a1", msgtype="audio")))
    kinds = [(m.kind, m.text) for m in ctx.submitted]
    assert kinds == [
        ("image", ""),
        ("text", "what is in this picture? and this one"),
        ("image", ""),
        ("voice", ""),
    ]


async def test_duplicate_msg_id_is_submitted_once():
    dt, ctx = adapter()
    for _ in range(3):
        assert (await dt.handle(request(payload("text_direct")))).status == 200
    assert len(ctx.submitted) == 1


@pytest.mark.parametrize(
    "make_headers",
    [
        lambda: {},
        lambda: {"timestamp": str(now_ms())},
        lambda: {"sign": signed_headers()["sign"]},
        lambda: signed_headers(secret="wrong"),
        lambda: {**signed_headers(), "sign": "ünïcode"},
        lambda: {**signed_headers(), "sign": signed_headers()["sign"] + "="},
        lambda: {**signed_headers(), "timestamp": "12ab"},
        lambda: signed_headers(now_ms() - 3_600_001),
        lambda: signed_headers(now_ms() + 3_660_000),
        lambda: signed_headers(now_ms() // 1000),  # seconds, not milliseconds
    ],
)
async def test_bad_headers_are_rejected_before_anything_else(make_headers):
    dt, ctx = adapter()
    headers = make_headers()
    with pytest.raises(VerificationError):
        await dt.handle(request(b"{not even json", headers))
    with pytest.raises(VerificationError):
        await dt.handle(request(payload("text_direct"), headers))
    assert ctx.claimed == set() and ctx.submitted == []


async def test_just_inside_the_window_is_accepted():
    dt, ctx = adapter()
    await dt.handle(request(payload("text_direct"), signed_headers(now_ms() - 3_590_000)))
    assert len(ctx.submitted) == 1


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"text": {"content": "hi"}}', b'{"msgId": 7}'])
async def test_malformed_bodies_are_request_errors(body):
    dt, ctx = adapter()
    with pytest.raises(RequestError):
        await dt.handle(request(body))
    assert ctx.submitted == []


async def test_odd_field_types_do_not_crash():
    dt, ctx = adapter()
    await dt.handle(request(payload("text_group", text="not an object", conversationType=2, senderNick=None)))
    (msg,) = ctx.submitted
    assert (msg.text, msg.direct, msg.user_name) == ("", False, None)


EVIL = [
    "https://evil.example.com/robot/sendBySession?session=x",
    "http://oapi.dingtalk.com/robot/sendBySession?session=x",
    "https://oapi.dingtalk.com.evil.com/robot/sendBySession",
    "https://oapi.dingtalk.com@evil.com/robot/sendBySession",
    "https://user:pw@oapi.dingtalk.com/robot/sendBySession",
    "https://oapi.dingtalk.com:@evil.com/robot/sendBySession",
    "https://oapi.dingtalk.com\\@evil.com/robot/sendBySession",
    "https://evil.com#@oapi.dingtalk.com/robot/sendBySession",
    "https://evil.com/robot/sendBySession#oapi.dingtalk.com",
    "https://oapi.dingtalk.com:8443/robot/sendBySession",
    "https://oapi.dingtalk.com:99999/robot/sendBySession",
    "https://oapi.dingtalk.com./robot/sendBySession",
    "https://oapi.dingtalk.com/robot/send?access_token=x",
    "https://oapi.dingtalk.com/robot/sendBySession/../../admin",
    "//oapi.dingtalk.com/robot/sendBySession",
    "/robot/sendBySession",
    "ftp://oapi.dingtalk.com/robot/sendBySession",
    "http://127.0.0.1:8080/robot/sendBySession",  # loopback without the test-only allowance
    "",
]


@pytest.mark.parametrize("evil", EVIL)
async def test_foreign_webhooks_are_refused_and_nothing_is_submitted(evil):
    assert isinstance(parse_webhook(evil, ["oapi.dingtalk.com"], []), str)
    dt, ctx = adapter()
    assert (await dt.handle(request(payload("text_direct", sessionWebhook=evil)))).status == 200
    assert ctx.submitted == [] and ctx.claimed == set()


def test_allowed_webhooks():
    hosts = ["oapi.dingtalk.com"]
    assert parse_webhook(REAL_WEBHOOK, hosts, []) == URL(REAL_WEBHOOK)
    assert isinstance(parse_webhook("https://oapi.dingtalk.com:443/robot/sendBySession?session=x", hosts, []), URL)
    assert isinstance(parse_webhook("http://127.0.0.1:5/robot/sendBySession", hosts, ["127.0.0.1"]), URL)
    assert isinstance(parse_webhook("http://127.0.0.1:5/other", hosts, ["127.0.0.1"]), str)
    assert DingTalkConfig(app_secret="s").allow_insecure_webhook_hosts == []  # strict by default


@pytest.mark.parametrize("expires", [now_ms() - 1, "soon", -5, True], ids=["past", "text", "negative", "bool"])
async def test_expired_or_garbled_expiry_is_not_answered(expires):
    dt, ctx = adapter()
    await dt.handle(request(payload("text_direct", sessionWebhookExpiredTime=expires)))
    assert ctx.submitted == []


async def test_config_is_strict():
    with pytest.raises(ValueError):
        DingTalkConfig(app_secret="s", session_webhook_host=["x"])
    with pytest.raises(ValueError):
        DingTalkConfig(app_secret="")


async def test_a_stored_reply_target_is_checked_again_and_its_expiry_decides():
    dt, ctx = adapter()
    await dt.handle(request(payload("text_direct", sessionWebhook=REAL_WEBHOOK)))
    (msg,) = ctx.submitted
    stored = orjson.loads(orjson.dumps(dt.dump_reply_to(msg.reply_to)))
    assert dt.load_reply_to(stored) == msg.reply_to and dt.resumable(msg, 0) is True
    with pytest.raises(ValueError, match="refused"):
        dt.load_reply_to({**stored, "webhook": "https://evil.example/robot/sendBySession"})
    expired = dt.load_reply_to({**stored, "expires_ms": now_ms() - 1})
    assert dt.resumable(dataclasses.replace(msg, reply_to=expired), 0) is False


async def test_a_recovered_long_answer_sends_only_the_parts_not_sent_yet(monkeypatch):
    monkeypatch.setattr(DingTalkPlatform, "text_limit", 60)
    words = " ".join(f"word{i:03d}" for i in range(20))  # three parts
    async with FakeWebhook() as hook, aiohttp.ClientSession() as http:
        dt, ctx = adapter(allow_insecure_webhook_hosts=["127.0.0.1"])
        ctx.http = http  # type: ignore[attr-defined]
        await dt.handle(request(payload("text_direct", sessionWebhook=hook.url)))
        (msg,) = ctx.submitted
        await dt.deliver(msg, WholeAnswer(words))
        parts = [p["markdown"]["text"] for p in hook.posts]
        assert len(parts) == 3 and ctx.notes[msg.event_id] == {"sent": 2}
        # as if the process died after the first part: the next one sends the other two
        await dt.deliver(dataclasses.replace(msg, recovered={"sent": 1}), WholeAnswer(words))
        assert [p["markdown"]["text"] for p in hook.posts[3:]] == parts[1:]
