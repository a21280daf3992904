"""Custom-menu buttons through the real app: a CLICK with a text answers it, a CLICK with a
prompt asks the model (on the menu's channel) and answers like a typed message, a VIEW (link)
button and an unknown key answer nothing."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from proxy.app import create_app
from proxy.config import parse_config
from proxy.errors import ConfigError
from tests.fakes.openai_upstream import FakeOpenAI
from tests.platforms.wechat_mp.test_integration import COMING, passive, rig
from tests.platforms.wechat_mp.wechat_kit import APP_ID, TOKEN, FakeWeChatAPI, payload, signed_query
from tests.servers import serve_asgi

MENUS = {
    "V1001_ABOUT": {"text": "我们是一家咖啡店。"},
    "V1002_TODAY": {"prompt": "今天推荐什么咖啡？", "channel": "barista"},
    "V1003_JOKE": {"prompt": "Tell me a joke."},
}


def config(up: FakeOpenAI, api: str, menus: dict[str, Any] = MENUS) -> dict[str, Any]:
    return {
        "store": {"url": "memory://"},  # each app its own: the events' ids repeat from test to test
        "providers": {"echo": {"kind": "echo"}, "gpt": {"kind": "openai", "base_url": up.base_url, "api_key": "k"}},
        "platforms": {"wx": {"kind": "wechat_mp", "token": TOKEN, "app_id": APP_ID, "api_base": api, "menus": menus}},
        "channels": [
            # reached by its menu button only: no chat has this id
            {"name": "barista", "match": {"chat": "nobody"}, "providers": ["gpt"], "prompt": "You are a barista."},
            {"name": "demo", "providers": ["echo"]},
        ],
    }


@contextlib.asynccontextmanager
async def app(up: FakeOpenAI) -> AsyncIterator[httpx.AsyncClient]:
    async with FakeWeChatAPI() as fake:
        async with (
            serve_asgi(create_app(parse_config(config(up, fake.base_url), {}))) as base,
            httpx.AsyncClient(base_url=base) as c,
        ):
            yield c


def click(key: str, event: str = "CLICK", at: str = "1732312900") -> bytes:
    return payload("subscribe", Event=event, EventKey=key, CreateTime=at)


async def post(c: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await c.post("/hooks/wx", params=signed_query(), content=body, timeout=5)


async def test_a_text_button_answers_its_text_and_calls_no_model():
    async with FakeOpenAI() as up, app(up) as c:
        assert passive(await post(c, click("V1001_ABOUT"))) == "我们是一家咖啡店。"
        assert passive(await post(c, click("V1001_ABOUT"))) == "我们是一家咖啡店。"  # WeChat's retry: the same reply
        assert up.requests == []


async def test_a_prompt_button_asks_the_model_on_its_channel():
    async with FakeOpenAI() as up, app(up) as c:
        assert passive(await post(c, click("V1002_TODAY"))) == "upstream: 今天推荐什么咖啡？"
        [request] = up.chat_requests()
        assert request.json["messages"] == [
            {"role": "system", "content": "You are a barista."},
            {"role": "user", "content": "今天推荐什么咖啡？"},
        ]
        # a button without a channel goes where the account's messages go (echo here)
        assert passive(await post(c, click("V1003_JOKE", at="1732312901"))) == "echo: Tell me a joke."


async def test_a_repeated_prompt_click_is_answered_once():
    async with FakeOpenAI() as up, app(up) as c:
        first = passive(await post(c, click("V1002_TODAY", at="1732312950")))
        again = await post(c, click("V1002_TODAY", at="1732312950"))  # WeChat's retry of the same event
        assert first == "upstream: 今天推荐什么咖啡？"
        assert passive(again) == first  # the stored answer again, not a second generation
        assert len(up.chat_requests()) == 1


async def test_view_buttons_and_unknown_keys_answer_nothing():
    async with FakeOpenAI() as up, app(up) as c:
        for body in (
            click("https://example.com/menu", event="VIEW"),
            click("pages/index/index", event="view_miniprogram"),
            click("V9999_GONE", at="1732312990"),
        ):
            resp = await post(c, body)
            assert (resp.status_code, resp.text) == (200, "success")
        assert up.requests == []


SLOW = {"SLOW": {"prompt": "what is new?", "channel": "gated"}}  # answered when the test opens the gate


async def test_a_slow_prompt_button_is_pushed_by_the_customer_service_api_like_a_typed_message():
    async with rig(menus=SLOW) as r:
        body = click("SLOW", at="1732313000")
        await r.dropped(body)  # WeChat's first two deliveries time out while the model works
        await r.dropped(body)
        last = await r.post(body)
        assert (last.status_code, last.text) == (200, "success")
        r.gated.gate.set()
        assert await r.fake.wait_sends(1) == ["gated: what is new?"]
        await r.sentinel()
        assert r.fake.texts == ["gated: what is new?"] and r.gated.calls == ["what is new?"]


async def test_without_app_secret_a_slow_prompt_button_waits_for_1():
    async with rig(secret=False, menus=SLOW) as r:
        body = click("SLOW", at="1732313100")
        await r.dropped(body)
        await r.dropped(body)
        assert passive(await r.post(body)) == COMING
        r.gated.gate.set()
        assert await r.send_1(9300) == "gated: what is new?" and r.fake.sends == []


async def test_a_menu_naming_an_unknown_channel_is_a_config_error():
    async with FakeOpenAI() as up:
        menus = {"K": {"prompt": "hi", "channel": "ghost"}}
        with pytest.raises(ConfigError) as e:
            parse_config(config(up, "http://127.0.0.1:9", menus), {})
        assert str(e.value).startswith("platforms.wx.menus.K.channel: unknown channel 'ghost'")
        with pytest.raises(ConfigError) as e:
            parse_config(config(up, "http://127.0.0.1:9", {"K": {"text": "a", "prompt": "b"}}), {})
        assert "platforms.wx.menus.K" in str(e.value) and "either text or prompt" in str(e.value)
