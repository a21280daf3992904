"""The self-built app (`kind: wecom`) through the real app: `create_app` served by uvicorn on
loopback, wechatpy playing WeCom's callbacks, and the fake WeCom API recording what the member
is sent."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from platforms.wecom import WeComBotPlatform, WeComPlatform
from proxy.app import create_app
from proxy.config import Settings, parse_config
from proxy.registry import Registry
from proxy.texts import BUNDLES
from tests.platforms.wecom.wecom_kit import (
    AES_KEY,
    AGENT_ID,
    CORP_ID,
    SECRET,
    TOKEN,
    USER,
    FakeWeCom,
    Signer,
    SteppedProvider,
    app_event,
    app_message,
    app_text,
)
from tests.servers import serve_asgi

ZH = BUNDLES["zh"]  # WeCom speaks zh unless `locale` says otherwise
SIGNER = Signer(CORP_ID)


def settings(api_base: str, *, store: str = "memory://", **wc: Any) -> Settings:
    app = {"kind": "wecom", "corp_id": CORP_ID, "agent_id": AGENT_ID, "secret": SECRET, "token": TOKEN}
    app |= {"encoding_aes_key": AES_KEY, "api_base": api_base, **wc}
    bot: dict[str, Any] = {"kind": "wecom_bot", "token": TOKEN, "encoding_aes_key": AES_KEY}
    bot["response_url_hosts"] = ["127.0.0.1"]
    data = {
        "server": {"drain_seconds": 0.5},
        "store": {"url": store},
        "providers": {"echo": {"kind": "echo"}, "stepped": {"kind": "stepped"}},
        "platforms": {"wc": app, "bot": bot},
        "channels": [
            {"name": "stepped", "match": {"prefix": "step:"}, "providers": ["stepped"]},
            {"name": "demo", "providers": ["echo"]},
        ],
    }
    return parse_config(
        data,
        {},
        providers=Registry("switchboard.providers", extra={"stepped": SteppedProvider}),
        platforms=Registry("switchboard.platforms", extra={"wecom": WeComPlatform, "wecom_bot": WeComBotPlatform}),
    )


class Rig:
    def __init__(self, client: httpx.AsyncClient, app: Any, fake: FakeWeCom) -> None:
        self.client, self.app, self.fake = client, app, fake

    async def post(self, inner_xml: str, **kw: Any) -> httpx.Response:
        body, query = SIGNER.app_callback(inner_xml, **kw)
        return await self.client.post("/hooks/wc", params=query, content=body)

    async def sentinel(self, n: int) -> list[str]:
        """One more message, answered after every message sent before it (answers start in order)."""
        assert (await self.post(app_text(f"sentinel-{n}", f"99{n:02d}"))).status_code == 200
        return await self.fake.wait_for(f"echo: sentinel-{n}")


@contextlib.asynccontextmanager
async def rig(fake: FakeWeCom | None = None, **kw: Any) -> AsyncIterator[Rig]:
    async with contextlib.AsyncExitStack() as stack:
        api = fake if fake is not None else await stack.enter_async_context(FakeWeCom())
        app = create_app(settings(api.base_url, **kw))
        base = await stack.enter_async_context(serve_asgi(app))
        client = await stack.enter_async_context(httpx.AsyncClient(base_url=base))
        yield Rig(client, app, api)


async def test_get_verification_answers_the_decrypted_echostr():
    async with rig() as r:
        ok = await r.client.get("/hooks/wc", params=SIGNER.verification("8473926150314159"))
        assert (ok.status_code, ok.text) == (200, "8473926150314159")
        assert ok.headers["content-type"].startswith("text/plain")
        wrong = {**SIGNER.verification("84739"), "nonce": "changed"}
        stale = SIGNER.verification("84739", ts=1_600_000_000)
        for query in (wrong, stale):
            bad = await r.client.get("/hooks/wc", params=query)
            assert (bad.status_code, bad.text) == (403, "unauthorized")
        other_corp = Signer("ww0000000000000000")  # signed right, encrypted for another CorpID
        bad = await r.client.get("/hooks/wc", params=other_corp.verification("84739"))
        assert (bad.status_code, bad.text) == (403, "unauthorized")


async def test_a_text_message_is_acknowledged_empty_and_answered_once_through_message_send():
    async with rig() as r:
        resp = await r.post(app_text("你好，WeCom", "7001"))
        assert (resp.status_code, resp.content) == (200, b"")
        assert await r.fake.wait_sends(1) == ["echo: 你好，WeCom"]
        sent = r.fake.sends[0]["json"]
        assert sent == {
            "touser": USER,
            "msgtype": "text",
            "agentid": AGENT_ID,
            "text": {"content": "echo: 你好，WeCom"},
            "safe": 0,
        }
        assert r.fake.sends[0]["access_token"] == "ACCESS_TOKEN_1"
        assert r.fake.token_calls == [{"corpid": CORP_ID, "corpsecret": SECRET}]


async def test_a_retried_delivery_of_one_msgid_is_answered_once():
    async with rig() as r:
        body = app_text("retried", "7002")
        for _ in range(3):  # WeCom's three deliveries
            assert (await r.post(body)).status_code == 200
        assert await r.sentinel(1) == ["echo: retried", "echo: sentinel-1"]


async def test_events_are_deduped_by_user_and_create_time_and_only_subscribe_is_answered():
    async with rig() as r:
        for _ in range(2):
            assert (await r.post(app_event("subscribe", "1735000100"))).status_code == 200
        assert (await r.post(app_event("enter_agent", "1735000101"))).status_code == 200
        texts = await r.sentinel(1)
        assert len(texts) == 2 and texts[1] == "echo: sentinel-1"
        assert texts[0].startswith("我是通过 Switchboard 接入的 AI 助手")  # the help text, once


async def test_an_expired_token_is_fetched_again_and_the_send_retried():
    async with rig() as r:
        await r.post(app_text("first", "7003"))
        assert await r.fake.wait_sends(1) == ["echo: first"]
        r.fake.expire()  # WeCom now answers 42001 to ACCESS_TOKEN_1
        await r.post(app_text("second", "7004"))
        assert await r.fake.wait_sends(2) == ["echo: first", "echo: second"]
        assert [s["access_token"] for s in r.fake.sends] == ["ACCESS_TOKEN_1", "ACCESS_TOKEN_1", "ACCESS_TOKEN_2"]
        assert [s["ok"] for s in r.fake.sends] == [True, False, True] and len(r.fake.token_calls) == 2


async def test_a_long_chinese_answer_is_split_at_2048_bytes():
    question = "\n".join(f"第{i}段：企业微信的文本消息最长两千零四十八个字节，一个汉字占三个字节。" for i in range(60))
    async with rig() as r:
        await r.post(app_text(question, "7005"))
        texts = await r.fake.wait_sends(3)
        await r.sentinel(1)
        parts = r.fake.texts[:-1]
        assert len(parts) >= 3 and all(len(p.encode("utf-8")) <= 2048 for p in parts)
        assert "\n".join(parts) == "echo: " + question  # cut at line ends, nothing lost
        assert texts[0].startswith("echo: 第0段")


async def test_an_image_gets_the_polite_text_only_answer():
    async with rig() as r:
        await r.post(app_message("image", "7006", PicUrl="https://wework.qpic.cn/x.png", MediaId="m1"))
        assert await r.fake.wait_sends(1) == [ZH["unsupported"]]


async def test_bad_signatures_and_foreign_messages_are_refused_and_nothing_is_answered():
    async with rig() as r:
        body, query = SIGNER.app_callback(app_text("forged", "7007"))
        for bad in ({**query, "msg_signature": "0" * 40}, {**query, "timestamp": "1600000000"}):
            resp = await r.client.post("/hooks/wc", params=bad, content=body)
            assert (resp.status_code, resp.text) == (403, "unauthorized")
        resp = await r.post(app_text("other corp", "7008"), receive_id="ww0000000000000000")
        assert (resp.status_code, resp.text) == (403, "unauthorized")
        wrong_token = await r.post(app_text("wrong token", "7009"), token="not-the-token")
        assert wrong_token.status_code == 403
        assert await r.sentinel(1) == ["echo: sentinel-1"]
        # none of them was claimed: the genuine message with the same MsgId is answered
        await r.post(app_text("forged", "7007"))
        assert await r.fake.wait_sends(2) == ["echo: sentinel-1", "echo: forged"]


async def test_allow_users_and_foreign_agent_ids_are_ignored():
    async with rig(allow_users=[USER]) as r:
        await r.post(app_text("stranger", "7010", user="LiSi"))
        await r.post(app_text("other app", "7011", AgentID="1000099"))
        assert await r.sentinel(1) == ["echo: sentinel-1"]


async def test_a_redelivery_after_a_restart_is_answered_once(tmp_path: Path):
    store = f"sqlite:///{tmp_path}/wecom.db"
    body = app_text("before the restart", "7012")
    async with FakeWeCom() as fake:
        async with rig(fake, store=store) as r:
            await r.post(body)
            assert await fake.wait_sends(1) == ["echo: before the restart"]
        async with rig(fake, store=store) as r:  # a new process on the same store
            assert (await r.post(body)).status_code == 200
            assert await r.sentinel(1) == ["echo: before the restart", "echo: sentinel-1"]
