"""The smart robot (`kind: wecom_bot`) through the real app: wechatpy encrypts WeCom's JSON
callbacks (receive id ""), opens every reply we make, and the test plays WeCom's stream refreshes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from proxy.app import create_app
from proxy.texts import BUNDLES
from tests.platforms.wecom.test_app import settings
from tests.platforms.wecom.wecom_kit import FakeWeCom, Signer, SteppedProvider, bot_refresh, bot_text, open_reply
from tests.servers import serve_asgi

SIGNER = Signer("")
_ids = itertools.count(1)


class BotRig:
    def __init__(self, client: httpx.AsyncClient, app: Any, fake: FakeWeCom) -> None:
        self.client, self.app, self.fake = client, app, fake

    @property
    def stepped(self) -> SteppedProvider:
        provider = self.app.state.engine.providers["stepped"]
        assert isinstance(provider, SteppedProvider)
        return provider

    async def post(self, data: dict[str, Any]) -> dict[str, Any] | None:
        """One callback; the decrypted reply (None for an empty one)."""
        body, query = SIGNER.bot_callback(data)
        resp = await self.client.post("/hooks/bot", params=query, content=body)
        assert resp.status_code == 200, resp.text
        return open_reply(resp.content, query["nonce"]) if resp.content else None

    async def refresh(self, sid: str) -> dict[str, Any]:
        """WeCom's stream refresh (each with a msgid of its own): the stream as we show it now."""
        reply = await self.post(bot_refresh(sid, f"refresh-{next(_ids)}"))
        assert reply is not None and reply["msgtype"] == "stream" and reply["stream"]["id"] == sid
        stream: dict[str, Any] = reply["stream"]
        return stream

    async def refresh_until(self, sid: str, content: str, finish: bool = False) -> dict[str, Any]:
        for _ in range(250):
            stream = await self.refresh(sid)
            if stream["content"] == content and stream["finish"] == finish:
                return stream
            await asyncio.sleep(0.02)
        raise AssertionError(f"the stream never showed {content!r} (finish {finish}): {stream}")


@contextlib.asynccontextmanager
async def bot_rig(store: str = "memory://") -> AsyncIterator[BotRig]:
    async with FakeWeCom() as fake:
        app = create_app(settings(fake.base_url, store=store))
        async with serve_asgi(app) as base, httpx.AsyncClient(base_url=base) as client:
            yield BotRig(client, app, fake)


async def test_get_verification_answers_the_decrypted_echostr():
    async with bot_rig() as r:
        ok = await r.client.get("/hooks/bot", params=SIGNER.verification("2718281828459045"))
        assert (ok.status_code, ok.text) == (200, "2718281828459045")
        corp = Signer("ww4f2a9c1e7b3d5086")  # the robot's callbacks are encrypted for "", not a CorpID
        bad = await r.client.get("/hooks/bot", params=corp.verification("27182"))
        assert (bad.status_code, bad.text) == (403, "unauthorized")


async def test_a_group_mention_gets_a_stream_whose_refreshes_grow_until_finished():
    async with bot_rig() as r:
        first = await r.post(bot_text("@RobotA step: 讲个故事", "msg-1", group=True))
        assert first is not None and first["msgtype"] == "stream"
        sid = first["stream"]["id"]
        assert first["stream"] == {"id": sid, "finish": False, "content": ""}
        await r.refresh_until(sid, "")
        assert r.stepped.calls == ["讲个故事"]  # the mention and the channel prefix are not part of the question
        r.stepped.pieces.put_nowait("从前有座山，")
        await r.refresh_until(sid, "从前有座山，")
        r.stepped.pieces.put_nowait("山里有座庙。")
        await r.refresh_until(sid, "从前有座山，山里有座庙。")
        r.stepped.pieces.put_nowait(None)
        await r.refresh_until(sid, "从前有座山，山里有座庙。", finish=True)
        assert await r.refresh(sid) == {"id": sid, "finish": True, "content": "从前有座山，山里有座庙。"}
        assert r.fake.responses == []


async def test_a_redelivered_message_gets_the_same_stream_and_one_answer():
    async with bot_rig() as r:
        first = await r.post(bot_text("step: once", "msg-2"))
        again = await r.post(bot_text("step: once", "msg-2"))
        assert first is not None and again is not None
        sid = first["stream"]["id"]
        assert again["stream"]["id"] == sid and again["stream"]["finish"] is False
        r.stepped.pieces.put_nowait("only once")
        r.stepped.pieces.put_nowait(None)
        await r.refresh_until(sid, "only once", finish=True)
        late = await r.post(bot_text("step: once", "msg-2"))  # after the answer: the finished stream
        assert late is not None and late["stream"] == {"id": sid, "finish": True, "content": "only once"}
        assert r.stepped.calls == ["once"]


async def test_an_unknown_stream_is_finished_and_events_get_an_empty_reply():
    async with bot_rig() as r:
        assert await r.refresh("0123456789abcdef0123456789abcdef") == {
            "id": "0123456789abcdef0123456789abcdef",
            "finish": True,
            "content": "",
        }
        event = {"msgid": "ev-1", "create_time": 1700000000, "aibotid": "x", "from": {"userid": "u"}}
        assert await r.post({**event, "msgtype": "event", "event": {"eventtype": "enter_chat"}}) is None


async def test_an_image_is_answered_politely_in_its_stream():
    async with bot_rig() as r:
        image = {**bot_text("", "msg-3"), "msgtype": "image", "image": {"url": "https://example.invalid/x"}}
        del image["text"]
        first = await r.post(image)
        assert first is not None
        await r.refresh_until(first["stream"]["id"], BUNDLES["zh"]["unsupported"], finish=True)


async def test_an_answer_longer_than_the_stream_continues_through_response_url():
    async with bot_rig() as r:
        r.app.state.hooks.platforms["bot"].config = r.app.state.hooks.platforms["bot"].config.model_copy(
            update={"text_limit": 120}
        )
        words = " ".join(f"词{i:03d}" for i in range(60))  # 60 × 9 bytes: more than one stream's 120
        first = await r.post(bot_text(words, "msg-4", response_url=r.fake.response_url("rc-4")))
        assert first is not None
        sid = first["stream"]["id"]
        for _ in range(250):
            stream = await r.refresh(sid)
            if stream["finish"]:
                break
            await asyncio.sleep(0.02)
        assert stream["finish"] and len(stream["content"].encode()) <= 120
        for _ in range(250):
            if r.fake.responses:
                break
            await asyncio.sleep(0.02)
        (posted,) = r.fake.responses
        assert posted["code"] == "rc-4" and posted["json"]["msgtype"] == "markdown"
        rest = posted["json"]["markdown"]["content"]
        assert f"{stream['content']} {rest}" == f"echo: {words}"[: len(stream["content"]) + 1 + len(rest)]


async def test_an_answer_finished_after_the_stream_window_goes_through_response_url():
    async with bot_rig() as r:
        bot = r.app.state.hooks.platforms["bot"]
        bot.config = bot.config.model_copy(update={"stream_window": 0.0})  # WeCom has stopped asking
        first = await r.post(bot_text("step: slow", "msg-6", response_url=r.fake.response_url("rc-6")))
        assert first is not None
        r.stepped.pieces.put_nowait("终于好了")
        r.stepped.pieces.put_nowait(None)
        for _ in range(250):
            if r.fake.responses:
                break
            await asyncio.sleep(0.02)
        assert r.fake.responses == [
            {"code": "rc-6", "json": {"msgtype": "markdown", "markdown": {"content": "终于好了"}}}
        ]


async def test_a_stream_survives_a_restart_on_the_same_store(tmp_path: Path):
    store = f"sqlite:///{tmp_path}/bot.db"
    async with bot_rig(store) as r:
        first = await r.post(bot_text("hello", "msg-5"))
        assert first is not None
        sid = first["stream"]["id"]
        await r.refresh_until(sid, "echo: hello", finish=True)
    async with bot_rig(store) as r:  # a new process: refreshes and redeliveries find the answer
        assert await r.refresh(sid) == {"id": sid, "finish": True, "content": "echo: hello"}
        again = await r.post(bot_text("hello", "msg-5"))
        assert again is not None and again["stream"] == {"id": sid, "finish": True, "content": "echo: hello"}
