"""Synology Chat through the real app: forms in, the exact entry.cgi / incoming-webhook posts out;
prefix routing to a chat channel and an image channel; code never run."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest

from proxy.app import create_app
from proxy.config import parse_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.platforms.synology.synology_kit import BOT_TOKEN, HOOK_TOKEN, FakeNAS, form
from tests.servers import serve_asgi

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def rig(tmp_path):
    async with FakeNAS() as nas, FakeOpenAI() as up:
        app = create_app(
            parse_config(
                {
                    "store": {"url": f"sqlite:///{tmp_path}/s.db"},
                    "providers": {
                        "chat": {"kind": "echo", "prefix": "chat: "},
                        "echo-rest": {"kind": "echo", "prefix": "rest: "},
                        "paint": {"kind": "openai_image", "base_url": up.base_url, "api_key": "sk-img"},
                    },
                    "platforms": {
                        "nas": {
                            "kind": "synology",
                            "tokens": ["${SYNO_BOT_TOKEN}", "${SYNO_HOOK_TOKEN}"],
                            "api_base": nas.base,
                            "bot_token": "${SYNO_BOT_TOKEN}",
                            "incoming_url": nas.base + "/incoming/default",
                            "incoming_urls": {"3": nas.base + "/incoming/general"},
                            "allow_users": ["4", "5"],
                            "send_interval": 0,
                        }
                    },
                    "channels": [
                        {
                            "name": "image",
                            "match": {"platform": "nas", "prefix": ["img:", "图片：", "生成图片："]},
                            "providers": ["paint"],
                        },
                        {"name": "ai", "match": {"platform": "nas", "prefix": ["ai:", "gpt:"]}, "providers": ["chat"]},
                        {"name": "rest", "match": {"platform": "nas"}, "providers": ["echo-rest"]},
                    ],
                },
                {"SYNO_BOT_TOKEN": BOT_TOKEN, "SYNO_HOOK_TOKEN": HOOK_TOKEN},
            )
        )
        async with serve_asgi(app) as url, httpx.AsyncClient() as c:
            yield nas, up, url, c


async def post(c: httpx.AsyncClient, url: str, name: str = "bot_dm", **fields: str) -> httpx.Response:
    return await c.post(f"{url}/hooks/nas", content=form(name, **fields), headers=FORM)


async def wait(nas: FakeNAS, n: int, patience: float = 5.0) -> list[dict[str, Any]]:
    """What the NAS got, once at least `n` posts arrived (at most `patience` s)."""
    for _ in range(int(patience / 0.02)):
        if len(nas.sent) >= n:
            break
        await asyncio.sleep(0.02)
    return nas.sent


async def sentinel(c: httpx.AsyncClient, url: str, nas: FakeNAS, sent: int, n: int = 1) -> list[dict[str, Any]]:
    """Send one more real message (a new post from the same user) and wait until its answer
    arrived. Answers are started in the order their messages came in, so whatever an earlier
    message would have caused has happened by then: exactly `sent` posts, the sentinel's answer
    the last, prove nothing else was sent. Returns what came before the sentinel's answer."""
    text = f"sentinel-{n}"
    assert (await post(c, url, post_id=text, text=text)).status_code == 200
    for _ in range(int(5.0 / 0.02)):
        if any(s["payload"].get("text") == f"rest: {text}" for s in nas.sent):
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError(f"the sentinel was not answered; sent: {nas.sent}")
    assert len(nas.sent) == sent and nas.sent[-1]["payload"]["text"] == f"rest: {text}", nas.sent
    return nas.sent[:-1]


async def test_bot_dm_answered_once_through_the_chatbot_api(rig):
    nas, _, url, c = rig
    for _ in range(2):  # the second one is the same post_id again
        r = await post(c, url, text="GPT: what is a NAS?")
        assert (r.status_code, r.json()) == (200, {})
    await wait(nas, 1)
    (sent,) = await sentinel(c, url, nas, 2)
    assert sent["payload"] == {"text": "chat: what is a NAS?", "user_ids": [4]}
    assert sent["query"] == {
        "api": "SYNO.Chat.External",
        "method": "chatbot",
        "version": "2",
        "token": f'"{BOT_TOKEN}"',
    }


async def test_channel_message_goes_to_that_channels_incoming_webhook(rig):
    nas, _, url, c = rig
    await post(c, url, "outgoing_webhook", text="!ask ai: hello there")
    await post(c, url, "outgoing_webhook", post_id="2", channel_id="8", text="!ask plain question")
    sent = await wait(nas, 2)
    assert sorted((s["via"], s["payload"]["text"]) for s in sent) == [
        ("incoming/default", "rest: plain question"),  # catch-all channel, default webhook
        ("incoming/general", "chat: hello there"),
    ]


@pytest.mark.parametrize("prefix", ["img:", "IMG:", "图片：", "生成图片："])
async def test_image_prefix_goes_to_the_image_channel_and_sends_a_file_url(rig, prefix):
    nas, up, url, c = rig
    await post(c, url, text=f"{prefix} a red fox")
    sent = await wait(nas, 2)
    assert [r.path for r in up.requests] == ["/v1/images/generations"]
    assert up.requests[0].json["prompt"] == "a red fox"
    assert [s["payload"] for s in sent] == [
        {"text": "a red fox", "user_ids": [4]},  # the caption (the backend's revised prompt)
        {"text": "", "file_url": "https://images.example/0.png", "user_ids": [4]},
    ]


@pytest.mark.parametrize("text", ["python: import os; os.system('rm -rf /')", "BASH: ls", "python：print(1)"])
async def test_code_is_refused_never_run_never_sent_to_a_model(rig, text):
    nas, up, url, c = rig
    assert (await post(c, url, text=text)).status_code == 200
    await wait(nas, 1)
    (sent,) = await sentinel(c, url, nas, 2)  # and no answer from a model follows
    assert sent["payload"] == {"text": "Switchboard does not run code from chat messages.", "user_ids": [4]}
    assert up.requests == []


async def test_bad_token_is_401_and_unknown_user_ignored(rig):
    nas, _, url, c = rig
    r = await post(c, url, token="wrong")
    assert (r.status_code, r.text) == (401, "unauthorized")
    assert (await post(c, url, token="")).status_code == 401
    assert (await post(c, url, user_id="99", post_id="p9")).status_code == 200
    assert await sentinel(c, url, nas, 1) == []


async def test_long_answer_split_in_order(rig):
    nas, _, url, c = rig
    words = " ".join(f"w{i:04d}" for i in range(700))  # ~4,200 characters: three parts
    await post(c, url, post_id="long", text=words)
    await wait(nas, 3)
    texts = [s["payload"]["text"] for s in await sentinel(c, url, nas, 4)]
    assert len(texts) == 3 and all(len(t) <= 2000 for t in texts)
    assert " ".join(texts) == "rest: " + words


async def test_refused_send_is_logged_without_the_token(rig, caplog):
    nas, _, url, c = rig
    nas.refuse = True
    with caplog.at_level(logging.INFO):
        await post(c, url, post_id="refused", text="hello")
        await wait(nas, 1)
        await sentinel(c, url, nas, 2)  # refused too
        for _ in range(250):  # each refusal is logged once the NAS answered
            if caplog.text.count("error code 117") >= 2:
                break
            await asyncio.sleep(0.02)
    assert caplog.text.count("error code 117") >= 2
    assert BOT_TOKEN not in caplog.text and "entry.cgi" not in caplog.text
