"""Synology Chat through the real app: forms in, the exact entry.cgi / incoming-webhook posts out;
prefix routing to a chat channel and an image channel; code never run."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
from aiohttp import web

from proxy.app import create_app
from proxy.config import parse_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import serve_aiohttp, serve_asgi

TOKEN = "t" * 64


class FakeNAS:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def __aenter__(self) -> FakeNAS:
        app = web.Application()

        async def entry(request: web.Request) -> web.Response:
            form = await request.post()
            self.sent.append({"query": dict(request.query), "payload": orjson.loads(form["payload"]), "via": "bot"})
            return web.json_response({"success": True})

        async def incoming(request: web.Request) -> web.Response:
            form = await request.post()
            self.sent.append({"payload": orjson.loads(form["payload"]), "via": "incoming"})
            return web.json_response({"success": True})

        app.router.add_post("/webapi/entry.cgi", entry)
        app.router.add_post("/incoming", incoming)
        self._cm = serve_aiohttp(app)
        self.base = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)


@pytest.fixture
async def rig(tmp_path):
    async with FakeNAS() as nas, FakeOpenAI() as up:
        app = create_app(
            parse_config(
                {
                    "store": {"url": f"sqlite:///{tmp_path}/s.db"},
                    "providers": {
                        "chat": {"kind": "echo", "prefix": "chat: "},
                        "paint": {"kind": "openai_image", "base_url": up.base_url, "api_key": "sk-img"},
                    },
                    "platforms": {
                        "nas": {
                            "kind": "synology",
                            "tokens": [TOKEN],
                            "api_base": nas.base,
                            "bot_token": "bot-secret",
                            "incoming_url": nas.base + "/incoming",
                            "allow_users": ["4", "5"],
                        }
                    },
                    "channels": [
                        {
                            "name": "image",
                            "match": {"platform": "nas", "prefix": ["img:", "图片：", "生成图片："]},
                            "providers": ["paint"],
                        },
                        {"name": "ai", "match": {"platform": "nas", "prefix": ["ai:", "gpt:"]}, "providers": ["chat"]},
                        {"name": "rest", "match": {"platform": "nas"}, "providers": ["chat"]},
                    ],
                },
                {},
            )
        )
        async with serve_asgi(app) as url, httpx.AsyncClient() as c:
            yield nas, up, url, c


async def send(c, url, **fields) -> httpx.Response:
    form = {
        "token": TOKEN,
        "user_id": "4",
        "username": "ada",
        "post_id": "p1",
        "timestamp": "1700000000000",
        "text": "hi",
        **fields,
    }
    return await c.post(
        f"{url}/hooks/nas", content=urlencode(form), headers={"Content-Type": "application/x-www-form-urlencoded"}
    )


async def wait(nas: FakeNAS, n: int, patience: float = 5.0) -> list[dict[str, Any]]:
    for _ in range(int(patience / 0.02)):
        if len(nas.sent) >= n:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    return nas.sent


async def test_bot_dm_answered_once_through_chatbot_api(rig):
    nas, _, url, c = rig
    assert (await send(c, url, text="GPT: hello")).status_code == 200
    assert (await send(c, url, text="GPT: hello")).status_code == 200  # same post_id again
    (sent,) = await wait(nas, 2, patience=0.5)
    assert sent["via"] == "bot" and sent["payload"] == {"text": "chat: hello", "user_ids": [4]}
    assert sent["query"]["token"] == '"bot-secret"' and sent["query"]["method"] == "chatbot"


async def test_channel_webhook_reply_and_catch_all(rig):
    nas, _, url, c = rig
    await send(c, url, post_id="p2", channel_id="7", channel_name="general", text="plain question")
    (sent,) = await wait(nas, 1)
    assert sent == {"payload": {"text": "chat: plain question"}, "via": "incoming"}


@pytest.mark.parametrize("prefix", ["img:", "IMG:", "图片：", "生成图片："])
async def test_image_prefix_goes_to_image_channel_and_sends_file_url(rig, prefix):
    nas, up, url, c = rig
    await send(c, url, post_id=f"i{prefix}", text=f"{prefix} a red fox")
    sent = await wait(nas, 2)
    assert up.requests[-1].json["prompt"] == "a red fox"
    assert [s["payload"].get("file_url") for s in sent] == [None, "https://images.example/0.png"]


@pytest.mark.parametrize("text", ["python: import os; os.system('rm -rf /')", "BASH: ls", "python：print(1)"])
async def test_code_is_refused_never_run_never_sent_to_a_model(rig, text):
    nas, up, url, c = rig
    await send(c, url, post_id="c1", text=text)
    (sent,) = await wait(nas, 1)
    assert sent["payload"]["text"] == "Switchboard does not run code from chat messages."
    assert up.requests == []


async def test_bad_token_is_401_and_unknown_user_ignored(rig):
    nas, _, url, c = rig
    assert (await send(c, url, token="wrong")).status_code == 401
    assert (await send(c, url, token="")).status_code == 401
    assert (await send(c, url, user_id="99", post_id="p9")).status_code == 200
    assert await wait(nas, 1, patience=0.4) == []


async def test_long_answer_split_in_order(rig):
    nas, _, url, c = rig
    words = " ".join(f"w{i:04d}" for i in range(500))  # ~3,000 characters
    await send(c, url, post_id="long", text=words)
    sent = await wait(nas, 2)
    texts = [s["payload"]["text"] for s in sent]
    assert len(texts) == 2 and all(len(t) <= 2000 for t in texts)
    assert " ".join(texts) == "chat: " + words
