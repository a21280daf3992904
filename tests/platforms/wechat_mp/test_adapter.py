"""The adapter on its own: verify → parse → dedupe → wait/hand off, with a tiny fake context.

The test decides when an answer is ready (it calls `deliver` itself), so the delivery logic is
checked without depending on how long anything takes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest
from pydantic import ValidationError
from wechatpy.crypto import WeChatCrypto

from platforms.wechat_mp import WeChatMPConfig, WeChatMPPlatform
from proxy.bus import Bus
from proxy.contracts import Claim, ClaimState, Platform, PlatformContext
from proxy.errors import RequestError, VerificationError
from proxy.store.memory import MemoryStore
from proxy.texts import BUNDLES
from proxy.types import Inbound, WebRequest, WebResponse
from tests.platforms.wechat_mp.wechat_kit import (
    AES_KEY,
    APP_ID,
    GH_ID,
    OPENID,
    TOKEN,
    fields,
    payload,
    safe_body,
    signed_query,
)

# WeChat speaks zh unless `locale` says otherwise: its "send 1" texts, as the user reads them.
ZH = BUNDLES["zh"]
COMING, STILL_WORKING, MORE = ZH["wechat_coming"], ZH["wechat_still_working"], ZH["wechat_more"]


class FakeCtx:
    def __init__(self, store: MemoryStore | None = None) -> None:
        self.store = store or MemoryStore()
        self.http: Any = None
        self.submitted: list[Inbound] = []
        self.tasks: list[asyncio.Task[Any]] = []
        self.bus = Bus(self.store)  # one instance: publishing does nothing

    async def claim(self, key: str) -> Claim:
        await asyncio.sleep(0.01)  # a real store answers from another thread or server
        first = await self.store.claim(f"seen:{key}", 3600)
        return Claim(ClaimState.NEW if first else ClaimState.DONE)

    async def settle(self, key: str) -> None:
        await self.store.claim(f"seen:{key}", 3600)

    def submit(self, platform: Platform, msg: Inbound) -> None:
        self.submitted.append(msg)

    def spawn(self, coro: Any, name: str) -> None:
        self.tasks.append(asyncio.create_task(coro))


class FixedAnswer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.images: tuple[str, ...] = ()
        self.failed = self.stopped = self.replaced = False

    async def __aiter__(self) -> Any:
        yield self.text


def make(ctx: FakeCtx | None = None, **over: Any) -> tuple[WeChatMPPlatform, FakeCtx]:
    ctx = ctx or FakeCtx()
    cfg = WeChatMPConfig(**{"kind": "wechat_mp", "token": TOKEN, "reply_wait": 0.05, "hold_max": 5, **over})
    return WeChatMPPlatform("wx", cfg, cast(PlatformContext, ctx)), ctx


def post(body: bytes, query: dict[str, str] | None = None) -> WebRequest:
    return WebRequest("POST", "/hooks/wx", {"content-type": "text/xml"}, query or signed_query(openid=OPENID), body)


async def submitted(ctx: FakeCtx, n: int) -> Inbound:
    for _ in range(250):
        if len(ctx.submitted) >= n:
            return ctx.submitted[n - 1]
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {n} submitted messages, got {len(ctx.submitted)}")


def reply_text(resp: WebResponse) -> str:
    assert resp.status == 200 and resp.content_type.startswith("application/xml"), resp
    f = fields(resp.body)
    assert f["ToUserName"] == OPENID and f["FromUserName"] == GH_ID and f["MsgType"] == "text"
    assert abs(int(f["CreateTime"]) - time.time()) < 60
    return f["Content"]


# -- verification ------------------------------------------------------------------------------


async def test_get_verification_echoes_echostr_verbatim():
    p, _ = make()
    q = signed_query(echostr="5838479218127813673")
    resp = await p.handle(WebRequest("GET", "/hooks/wx", {}, q, b""))
    assert (resp.status, resp.body, resp.content_type) == (200, b"5838479218127813673", "text/plain; charset=utf-8")


@pytest.mark.parametrize(
    "query",
    [
        {**signed_query(echostr="x"), "signature": "0" * 40},
        signed_query(echostr="x", token="another-token"),
        {"timestamp": "1", "nonce": "2", "echostr": "x"},
        signed_query(ts=int(time.time()) - 600, echostr="x"),  # outside the 5-minute replay window
        signed_query(ts=int(time.time()) + 600, echostr="x"),
    ],
)
async def test_bad_signature_or_stale_timestamp_is_refused(query: dict[str, str]):
    p, ctx = make()
    for method in ("GET", "POST"):
        with pytest.raises(VerificationError) as err:
            await p.handle(WebRequest(method, "/hooks/wx", {}, query, payload("text")))
        assert err.value.status == 403
    assert ctx.submitted == []


@pytest.mark.parametrize("name", ["billion_laughs", "xxe"])
async def test_entity_tricks_are_rejected_as_malformed(name: str):
    p, ctx = make()
    with pytest.raises(RequestError) as err:
        await p.handle(post(payload(name)))
    assert err.value.status == 400 and ctx.submitted == []


@pytest.mark.parametrize("body", [b"<xml><MsgType>text", b'{"json": true}', b"<xml><MsgType>text</MsgType></xml>"])
async def test_malformed_or_incomplete_bodies_are_400(body: bytes):
    p, ctx = make()
    with pytest.raises(RequestError) as err:
        await p.handle(post(body))
    assert err.value.status == 400 and ctx.submitted == []


UNREADABLE_ENCODINGS = ["bogus", "hex", "rot13", "utf-32", "idna", "mbcs"]  # unknown, not text, refused by expat


@pytest.mark.parametrize("encoding", UNREADABLE_ENCODINGS)
async def test_xml_declaring_an_unreadable_encoding_is_400_in_plaintext_and_safe_mode(encoding: str):
    """Regression (issue 9): a LookupError from the XML declaration was a 500."""
    declaration = f'<?xml version="1.0" encoding="{encoding}"?>'.encode()
    p, ctx = make()
    with pytest.raises(RequestError) as err:
        await p.handle(post(declaration + payload("text")))
    assert err.value.status == 400

    safe, safe_ctx = make(app_id=APP_ID, encoding_aes_key=AES_KEY)
    q = signed_query(openid=OPENID)
    inner_body, inner_q = safe_body(declaration + payload("text"), q)  # validly encrypted and signed
    outer_body, outer_q = safe_body(payload("text"), q)
    for body, query in [(inner_body, inner_q), (declaration + outer_body, outer_q)]:
        with pytest.raises(RequestError) as err:
            await safe.handle(post(body, query))
        assert err.value.status == 400
    for c in (ctx, safe_ctx):
        assert c.submitted == [] and await c.store.get("seen:msg:24602465467433024") is None


# -- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "msg_id"),
    [
        ("image", "image", "24602465467433101"),
        ("voice", "voice", "24602465467433102"),
        ("shortvideo", "video", "24602465467433103"),
        ("location", "location", "24602465467433104"),
        ("link", "link", "24602465467433105"),
    ],
)
async def test_other_message_types_reach_the_core_with_their_kind(name: str, kind: str, msg_id: str):
    p, ctx = make()
    task = asyncio.create_task(p.handle(post(payload(name))))
    msg = await submitted(ctx, 1)
    assert (msg.kind, msg.text, msg.event_id) == (kind, "", f"msg:{msg_id}")
    assert (msg.chat_id, msg.user_id, msg.direct, msg.platform) == (OPENID, OPENID, True, "wx")
    await p.deliver(msg, FixedAnswer("Sorry, text only."))
    assert reply_text(await task) == "Sorry, text only."


async def test_subscribe_asks_the_core_for_help_and_unsubscribe_is_acknowledged():
    p, ctx = make()
    task = asyncio.create_task(p.handle(post(payload("subscribe"))))
    msg = await submitted(ctx, 1)
    assert (msg.text, msg.kind) == ("/help", "text")
    assert msg.event_id == f"event:{OPENID}:1732312900:subscribe:qrscene_1001"
    await p.deliver(msg, FixedAnswer("I'm an AI assistant."))
    assert reply_text(await task) == "I'm an AI assistant."
    resp = await p.handle(post(payload("unsubscribe")))
    assert (resp.status, resp.body) == (200, b"success") and len(ctx.submitted) == 1


async def test_events_in_the_same_second_differ_by_event_key():
    p, ctx = make(reply_wait=0.01, deliveries=1)
    await p.handle(post(payload("subscribe")))
    await p.handle(post(payload("subscribe", EventKey="qrscene_2002")))
    await p.handle(post(payload("subscribe")))  # the same event again
    assert [m.event_id.rsplit(":", 1)[1] for m in ctx.submitted] == ["qrscene_1001", "qrscene_2002"]


# -- the 5-second deadline, by delivery count --------------------------------------------------


async def test_answer_goes_out_on_the_delivery_that_is_waiting():
    p, ctx = make()
    first = asyncio.create_task(p.handle(post(payload("text"))))
    msg = await submitted(ctx, 1)
    await asyncio.sleep(0.1)  # past reply_wait: the first delivery is held open, unanswered
    assert not first.done()
    second = asyncio.create_task(p.handle(post(payload("text"))))  # WeChat dropped the first
    dropped = await first
    assert (dropped.status, dropped.body) == (200, b"")
    await p.deliver(msg, FixedAnswer("echo: hello there"))
    assert reply_text(await second) == "echo: hello there"
    assert len(ctx.submitted) == 1


async def test_simultaneous_duplicate_deliveries_make_one_job():
    p, ctx = make()
    first = asyncio.create_task(p.handle(post(payload("text"))))
    second = asyncio.create_task(p.handle(post(payload("text"))))  # arrives before the claim is stored
    msg = await submitted(ctx, 1)
    await p.deliver(msg, FixedAnswer("only once"))
    for task in (first, second):  # both wait on the one job; WeChat reads whichever it still holds
        assert reply_text(await task) == "only once"
    assert len(ctx.submitted) == 1


async def test_a_delivery_nobody_retries_hands_off_after_hold_max():
    p, ctx = make(hold_max=0.1)
    resp = await p.handle(post(payload("text")))  # WeChat never delivers again
    assert reply_text(resp) == COMING
    await p.deliver(ctx.submitted[0], FixedAnswer("kept"))
    assert reply_text(await p.handle(post(payload("text", Content="1", MsgId="3001")))) == "kept"


async def test_last_delivery_without_secret_says_coming_and_1_serves_it():
    p, ctx = make()
    tasks = [asyncio.create_task(p.handle(post(payload("text"))))]
    msg = await submitted(ctx, 1)
    for _ in range(2):
        await asyncio.sleep(0.1)
        tasks.append(asyncio.create_task(p.handle(post(payload("text")))))
    assert reply_text(await tasks[2]) == COMING
    assert [(await t).body for t in tasks[:2]] == [b"", b""]
    early = await p.handle(post(payload("text", Content="1", MsgId="1001")))
    assert reply_text(early) == STILL_WORKING
    await p.deliver(msg, FixedAnswer("the slow answer"))
    served = await p.handle(post(payload("text", Content="1", MsgId="1002")))
    assert reply_text(served) == "the slow answer"
    assert len(ctx.submitted) == 1  # neither "1" reached the core
    again = asyncio.create_task(p.handle(post(payload("text", Content="1", MsgId="1003"))))
    assert (await submitted(ctx, 2)).text == "1"  # nothing kept any more: an ordinary "1"
    again.cancel()


async def test_long_answer_first_part_passive_rest_kept_for_1():
    p, ctx = make(text_limit=100)
    words = " ".join(f"w{i:03d}" for i in range(60))  # 299 characters
    task = asyncio.create_task(p.handle(post(payload("text"))))
    await p.deliver(await submitted(ctx, 1), FixedAnswer(words))
    pieces = [reply_text(await task)]
    for i in range(5):
        pieces.append(reply_text(await p.handle(post(payload("text", Content="1", MsgId=f"2{i}")))))
        if not pieces[-1].endswith(MORE):
            break
    assert all(len(x) <= 100 for x in pieces) and len(pieces) == 4
    assert " ".join(x.removesuffix(MORE) for x in pieces) == words


async def test_retry_after_restart_serves_the_stored_answer_or_success():
    store = MemoryStore()
    p, ctx = make(FakeCtx(store))
    task = asyncio.create_task(p.handle(post(payload("text"))))
    await p.deliver(await submitted(ctx, 1), FixedAnswer("answered before the restart"))
    assert reply_text(await task) == "answered before the restart"
    p2, ctx2 = make(FakeCtx(store))  # a new process: no in-memory jobs, same store
    assert reply_text(await p2.handle(post(payload("text")))) == "answered before the restart"
    await store.claim("seen:msg:777", 3600)  # claimed, but the process died before answering
    resp = await p2.handle(post(payload("text", MsgId="777")))
    assert (resp.status, resp.body) == (200, b"success") and ctx2.submitted == []


# -- safe mode ---------------------------------------------------------------------------------


async def test_safe_mode_round_trip_and_refusals():
    p, ctx = make(app_id=APP_ID, encoding_aes_key=AES_KEY)
    q = signed_query(openid=OPENID)
    body, sq = safe_body(payload("text"), q)
    task = asyncio.create_task(p.handle(post(body, sq)))
    msg = await submitted(ctx, 1)
    assert msg.text == "hello there"
    await p.deliver(msg, FixedAnswer("secret answer"))
    resp = await task
    env = fields(resp.body)
    inner = WeChatCrypto(TOKEN, AES_KEY, APP_ID).decrypt_message(
        resp.body, env["MsgSignature"], env["TimeStamp"], env["Nonce"]
    )
    assert fields(inner)["Content"] == "secret answer" and fields(inner)["ToUserName"] == OPENID

    refused = [
        post(payload("text", MsgId="1"), q),  # plaintext in safe mode
        post(body, {**sq, "msg_signature": "0" * 40}),
        post(safe_body(payload("text", MsgId="2"), q, app_id="wx0000000000000000")[0], sq),
    ]
    forged_body, forged_q = safe_body(payload("text", MsgId="3"), q, app_id="wx0000000000000000")
    refused.append(post(forged_body, forged_q))  # well signed, but for another AppID
    for req in refused:
        with pytest.raises(VerificationError) as err:
            await p.handle(req)
        assert err.value.status == 403
    assert len(ctx.submitted) == 1


def test_config_checks():
    assert WeChatMPConfig(kind="wechat_mp", token="t", app_secret="", encoding_aes_key="").app_secret is None
    with pytest.raises(ValidationError, match="32 bytes"):
        WeChatMPConfig(kind="wechat_mp", token="t", app_id=APP_ID, encoding_aes_key=AES_KEY[:40])
    with pytest.raises(ValidationError, match="app_id is required"):
        WeChatMPConfig(kind="wechat_mp", token="t", encoding_aes_key=AES_KEY)
    with pytest.raises(ValidationError):
        WeChatMPConfig(kind="wechat_mp", token="t", reply_wait=5)
