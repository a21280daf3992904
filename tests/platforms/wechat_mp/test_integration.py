"""Through the real app: `create_app` served by uvicorn on loopback, a real HTTP client playing
WeChat (a short client timeout is WeChat dropping a delivery after 5 s), the echo provider, a
gated provider for answers the test holds back, and a fake WeChat API recording every call.

Routing in these configs: "gated: …" goes to the gated provider, "slow: …" to echo with a
delay, anything else to plain echo.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from wechatpy.crypto import WeChatCrypto

from platforms.wechat_mp import WeChatMPPlatform
from proxy.app import create_app
from proxy.config import Settings, parse_config
from proxy.registry import Registry
from proxy.texts import BUNDLES
from tests.platforms.wechat_mp.wechat_kit import (
    AES_KEY,
    APP_ID,
    APP_SECRET,
    GH_ID,
    OPENID,
    TOKEN,
    FakeWeChatAPI,
    GatedProvider,
    fields,
    payload,
    safe_body,
    signed_query,
)
from tests.servers import serve_asgi

DROP = 0.3  # client-side timeout standing in for WeChat's 5 s

# WeChat speaks zh unless `locale` says otherwise: its "send 1" texts, as the user reads them.
ZH = BUNDLES["zh"]
COMING, STILL_WORKING, MORE = ZH["wechat_coming"], ZH["wechat_still_working"], ZH["wechat_more"]


def settings(api_base: str, *, secret: bool = True, aes: bool = False, store: str = "memory://", **wx: Any) -> Settings:
    platform: dict[str, Any] = {"kind": "wechat_mp", "token": TOKEN, "app_id": APP_ID, "api_base": api_base}
    platform |= {"reply_wait": 0.3, "hold_max": 5, **wx}
    if secret:
        platform["app_secret"] = APP_SECRET
    if aes:
        platform["encoding_aes_key"] = AES_KEY
    data = {
        "server": {"drain_seconds": 0.5},
        "store": {"url": store},
        "providers": {"echo": {"kind": "echo"}, "slow": {"kind": "echo", "delay": 0.3}, "gated": {"kind": "gated"}},
        "platforms": {"wx": platform},
        "channels": [
            {"name": "gated", "match": {"platform": "wx", "prefix": "gated:"}, "providers": ["gated"]},
            {"name": "slow", "match": {"platform": "wx", "prefix": "slow:"}, "providers": ["slow"]},
            {"name": "demo", "providers": ["echo"]},
        ],
    }
    return parse_config(
        data,
        {},
        providers=Registry("switchboard.providers", extra={"gated": GatedProvider}),
        platforms=Registry("switchboard.platforms", extra={"wechat_mp": WeChatMPPlatform}),
    )


class Rig:
    def __init__(self, client: httpx.AsyncClient, app: Any, fake: FakeWeChatAPI) -> None:
        self.client, self.app, self.fake = client, app, fake

    @property
    def gated(self) -> GatedProvider:
        provider = self.app.state.engine.providers["gated"]
        assert isinstance(provider, GatedProvider)
        return provider

    async def post(self, body: bytes, query: dict[str, str] | None = None, timeout: float = 5) -> httpx.Response:
        q = query or signed_query(openid=OPENID)
        return await self.client.post("/hooks/wx", params=q, content=body, timeout=timeout)

    async def sentinel(self, n: int = 1) -> None:
        """One more real message from the same user, answered in the response to it. Answers are
        started in the order their messages came in, so whatever an earlier message would have
        caused (a customer-service message, say) has happened by then."""
        resp = await self.post(payload("text", Content=f"sentinel-{n}", MsgId=f"99{n:02d}"))
        assert passive(resp) == f"echo: sentinel-{n}"

    async def send_1(self, first_id: int) -> str:
        """Send "1" (new MsgIds from `first_id`) until the kept answer comes instead of
        STILL_WORKING (at most 100 times); the last reply."""
        served = STILL_WORKING
        for i in range(100):
            served = passive(await self.post(payload("text", Content="1", MsgId=str(first_id + i))))
            if served != STILL_WORKING:
                break
            await asyncio.sleep(0.05)
        return served

    async def dropped(self, body: bytes) -> None:
        """A delivery WeChat gives up on: the adapter must not have answered it in time."""
        with pytest.raises(httpx.ReadTimeout):
            await self.post(body, timeout=DROP)


@contextlib.asynccontextmanager
async def rig(**kw: Any) -> AsyncIterator[Rig]:
    async with FakeWeChatAPI() as fake:
        app = create_app(settings(fake.base_url, **kw))
        async with serve_asgi(app) as base, httpx.AsyncClient(base_url=base) as client:
            yield Rig(client, app, fake)


def passive(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text
    f = fields(resp.content)
    assert (f["ToUserName"], f["FromUserName"], f["MsgType"]) == (OPENID, GH_ID, "text")
    return f["Content"]


async def test_get_verification():
    async with rig() as r:
        ok = await r.client.get("/hooks/wx", params=signed_query(echostr="3141592653589793"))
        assert (ok.status_code, ok.text) == (200, "3141592653589793")
        assert ok.headers["content-type"].startswith("text/plain")
        bad = await r.client.get("/hooks/wx", params={**signed_query(echostr="31415"), "nonce": "changed"})
        assert (bad.status_code, bad.text) == (403, "unauthorized")


async def test_plaintext_message_gets_a_passive_reply_with_the_answer():
    async with rig() as r:
        assert passive(await r.post(payload("text"))) == "echo: hello there"
        assert r.fake.sends == []


async def test_tampered_signature_and_entity_bodies_are_refused_unprocessed():
    async with rig() as r:
        tampered = {**signed_query(openid=OPENID), "signature": "f" * 40}
        resp = await r.post(payload("text"), tampered)
        assert (resp.status_code, resp.text) == (403, "unauthorized")
        for name in ("billion_laughs", "xxe"):
            resp = await r.post(payload(name))
            assert resp.status_code == 400 and "DTD" in resp.text
        # none of them was claimed: the genuine message still gets its answer
        assert passive(await r.post(payload("text"))) == "echo: hello there"


async def test_safe_mode_round_trip():
    async with rig(aes=True) as r:
        body, q = safe_body(payload("text", Content="encrypted hi"), signed_query(openid=OPENID))
        resp = await r.post(body, q)
        env = fields(resp.content)
        assert set(env) == {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"}
        inner = WeChatCrypto(TOKEN, AES_KEY, APP_ID).decrypt_message(
            resp.content, env["MsgSignature"], env["TimeStamp"], env["Nonce"]
        )
        reply = fields(inner)
        assert (reply["Content"], reply["ToUserName"], reply["FromUserName"]) == ("echo: encrypted hi", OPENID, GH_ID)


async def test_slow_answer_goes_out_on_the_retry_delivery():
    async with rig() as r:
        body = payload("text", Content="slow: one two three")  # echo with 0.3 s between words
        await r.dropped(body)
        assert passive(await r.post(body)) == "echo: one two three"
        assert r.fake.sends == []


async def test_slower_still_success_then_exactly_one_customer_service_message():
    async with rig() as r:
        body = payload("text", Content="gated: what is new?")
        await r.dropped(body)
        await r.dropped(body)
        last = await r.post(body)
        assert (last.status_code, last.text) == (200, "success")
        r.gated.gate.set()
        assert await r.fake.wait_sends(1) == ["gated: what is new?"]
        await r.sentinel()
        assert r.fake.texts == ["gated: what is new?"] and len(r.fake.sends) == 1
        assert r.fake.sends[0]["json"]["touser"] == OPENID and len(r.fake.token_calls) == 1
        assert r.gated.calls == ["what is new?"]


async def test_without_app_secret_the_answer_waits_for_1():
    async with rig(secret=False) as r:
        body = payload("text", Content="gated: tell me later")
        await r.dropped(body)
        await r.dropped(body)
        assert passive(await r.post(body)) == COMING
        assert passive(await r.post(payload("text", Content="1", MsgId="9001"))) == STILL_WORKING
        r.gated.gate.set()
        assert await r.send_1(9100) == "gated: tell me later"
        assert r.gated.calls == ["tell me later"] and r.fake.sends == [] and r.fake.token_calls == []


async def test_duplicate_msgid_never_generates_twice():
    async with rig() as r:
        body = payload("text", Content="gated: once")
        await r.dropped(body)
        waiting = asyncio.create_task(r.post(body))
        await asyncio.sleep(0.1)
        r.gated.gate.set()
        assert passive(await waiting) == "gated: once"
        assert passive(await r.post(body)) == "gated: once"  # a late duplicate gets the same answer
        assert r.gated.calls == ["once"] and r.fake.sends == []


async def test_subscribe_gets_the_help_text():
    async with rig() as r:
        assert passive(await r.post(payload("subscribe"))) == (
            "我是通过 Switchboard 接入的 AI 助手（频道 demo）。\n"
            "直接发送你的问题即可，我会记住我们的对话。\n"
            "/clear：清除对话记录。  /help：显示本帮助。"
        )
        resp = await r.post(payload("unsubscribe"))
        assert (resp.status_code, resp.text) == (200, "success")


async def test_other_message_types_get_the_polite_line():
    async with rig() as r:
        answer = passive(await r.post(payload("image")))
        assert answer == "抱歉，我目前只能阅读文字消息，请用文字发送你的问题。"


async def test_long_answer_first_part_passive_rest_through_customer_service():
    async with rig(text_limit=100) as r:
        words = " ".join(f"w{i:03d}" for i in range(50))  # "echo: " + 249 characters
        first = passive(await r.post(payload("text", Content=words)))
        rest = await r.fake.wait_sends(2)
        assert [len(x) <= 100 for x in [first, *rest]] == [True] * 3
        assert " ".join([first, *rest]) == "echo: " + words


async def test_customer_service_failure_keeps_the_answer_for_1():
    async with rig() as r:
        r.fake.send_errors.append(45015)  # outside the 48-hour window
        body = payload("text", Content="gated: keep it")
        await r.dropped(body)
        await r.dropped(body)
        assert (await r.post(body)).text == "success"
        r.gated.gate.set()
        for _ in range(100):
            if r.fake.sends:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        assert passive(await r.post(payload("text", Content="1", MsgId="9201"))) == "gated: keep it"


async def test_a_retry_after_a_restart_gets_the_answer_lost_in_the_restart(tmp_path: Path):
    store = f"sqlite:///{tmp_path}/wx.db"
    body = payload("text", Content="gated: lost in the restart", MsgId="5150")
    async with rig(store=store, hold_max=0.5) as r:
        await r.dropped(body)  # claimed; the process stops before the answer is ready
    async with rig(store=store) as r:  # a new process with the same store answers it once
        retry = asyncio.create_task(r.post(body))
        adapter = r.app.state.hooks.platforms["wx"]
        for _ in range(250):  # the retry is waiting for the recovered answer
            pending = adapter._pending.get("msg:5150")
            if r.gated.calls and pending is not None and pending.waiting:
                break
            await asyncio.sleep(0.02)
        r.gated.gate.set()
        assert passive(await retry) == "gated: lost in the restart"
        assert r.gated.calls == ["lost in the restart"] and r.fake.sends == []
        history = await r.app.state.engine.store.history(f"gated|wx|{OPENID}/{OPENID}", 5)
        assert [m.content for m in history] == ["lost in the restart", "gated: lost in the restart"]


async def test_a_retry_during_the_push_of_a_recovered_answer_gets_success_at_once(tmp_path: Path):
    """The recovered answer is ready before WeChat's retry arrives, so it goes out through the
    customer-service API; a retry arriving while that push is under way says `success` at once
    (holding it open would only make WeChat drop it after 5 s)."""
    store = f"sqlite:///{tmp_path}/wx.db"
    body = payload("text", Content="gated: pushed after the restart", MsgId="5151")
    async with rig(store=store, hold_max=0.5) as r:
        await r.dropped(body)
    async with FakeWeChatAPI() as fake:
        fake.send_gate = asyncio.Event()
        app = create_app(settings(fake.base_url, store=store))
        async with serve_asgi(app) as base, httpx.AsyncClient(base_url=base) as client:
            r = Rig(client, app, fake)
            r.gated.gate.set()
            for _ in range(250):  # the answer is being pushed, held at the fake API
                if fake.sends:
                    break
                await asyncio.sleep(0.02)
            retry = await r.post(body, timeout=DROP + 2)  # under hold_max (5 s): not held open
            assert (retry.status_code, retry.text) == (200, "success")
            fake.send_gate.set()
            assert await fake.wait_sends(1) == ["gated: pushed after the restart"]
            again = await r.post(body)
            assert (again.status_code, again.text) == (200, "success")
            assert r.gated.calls == ["pushed after the restart"] and len(fake.sends) == 1


async def test_a_retry_after_a_restart_gets_the_stored_answer(tmp_path: Path):
    store = f"sqlite:///{tmp_path}/wx.db"
    async with rig(store=store) as r:
        assert passive(await r.post(payload("text"))) == "echo: hello there"
    async with rig(store=store) as r:  # a new process: the retry finds the answer, not a new generation
        assert passive(await r.post(payload("text"))) == "echo: hello there"
        assert len(await r.app.state.engine.store.history(f"demo|wx|{OPENID}/{OPENID}", 5)) == 2  # one exchange
