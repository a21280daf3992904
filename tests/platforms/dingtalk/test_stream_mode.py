"""DingTalk Stream mode through the real app: Switchboard opens the connection to a fake Stream
gateway (a real WebSocket on loopback), which pushes bot-message and system frames, records the
acknowledgements and drops the connection; answers go to the fake sessionWebhook."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from dingtalk_stream import AckMessage
from dingtalk_stream.frames import Headers

from proxy.app import create_app
from proxy.config import parse_config
from proxy.errors import ConfigError
from tests.platforms.dingtalk.dingtalk_kit import CLIENT_ID, SECRET, FakeStreamGateway, FakeWebhook, payload
from tests.platforms.dingtalk.test_dingtalk import wait_posts
from tests.servers import serve_asgi


def app(tmp_path: Path, gateway: str, delay: float = 0.0, **extra: Any) -> Any:
    ding = {
        **extra,
        "kind": "dingtalk",
        "mode": "stream",
        "client_id": CLIENT_ID,
        "app_secret": SECRET,
        "gateway": gateway,
        "allow_insecure_webhook_hosts": ["127.0.0.1"],
    }
    return create_app(
        parse_config(
            {
                "store": {"url": f"sqlite:///{tmp_path}/d.db"},
                "providers": {"echo": {"kind": "echo", "delay": delay}},
                "platforms": {"ding": ding},
                "channels": [{"name": "support", "match": {"platform": "ding"}, "providers": ["echo"]}],
            },
            {},
        )
    )


def message(hook: FakeWebhook, msg_id: str, text: str) -> dict[str, Any]:
    return payload("text_direct", msgId=msg_id, text={"content": text}, sessionWebhook=hook.url)


def texts(hook: FakeWebhook) -> list[str]:
    return [p["markdown"]["text"] for p in hook.posts if "markdown" in p]


def sdk_ack(message_id: str, data: Any) -> dict[str, Any]:
    """The acknowledgement the official dingtalk-stream SDK sends for the same frame."""
    ack = AckMessage()
    ack.headers.message_id, ack.headers.content_type = message_id, Headers.CONTENT_TYPE_APPLICATION_JSON
    ack.message, ack.data = "OK", data
    return ack.to_dict()


async def test_bot_messages_over_the_stream_are_answered_once_and_acknowledged(tmp_path):
    async with FakeStreamGateway() as gw, FakeWebhook() as hook:
        async with serve_asgi(app(tmp_path, gw.base)) as url, httpx.AsyncClient() as c:
            assert await gw.wait("connections", 1) == 1
            gw.push(gw.bot_message("m-1", message(hook, "msgA", "hello")))
            gw.push(gw.bot_message("m-2", message(hook, "msgA", "hello")))  # delivered again
            gw.push(gw.ping("p-1"))
            gw.push(gw.bot_message("m-3", message(hook, "msgB", "again")))
            acks = await gw.wait("acks", 4)
            await wait_posts(hook, 2)
            ready = (await c.get(f"{url}/readyz")).json()
            callback = await c.post(f"{url}/hooks/ding", content=b"{}")
    assert sorted(texts(hook)) == ["echo: again", "echo: hello"]
    assert acks["m-1"] == sdk_ack("m-1", {"response": "OK"}) == acks["m-2"] | {"headers": acks["m-1"]["headers"]}
    ping = acks["p-1"]
    assert (ping["code"], ping["headers"]["messageId"], json.loads(ping["data"])) == (200, "p-1", {"opaque": "p-1"})
    assert gw.opens[0]["subscriptions"] == [{"type": "CALLBACK", "topic": "/v1.0/im/bot/messages/get"}]
    assert ready["connections"]["ding"]["state"] == "connected"
    assert callback.status_code == 403  # Stream mode: no callback URL


async def test_drops_and_disconnects_reconnect_without_losing_or_doubling(tmp_path):
    async with FakeStreamGateway() as gw, FakeWebhook() as hook:
        async with serve_asgi(app(tmp_path, gw.base, delay=0.3)) as url, httpx.AsyncClient() as c:
            await gw.wait("connections", 1)
            gw.push(gw.bot_message("m-1", message(hook, "msg1", "one")))
            await gw.wait("acks", 1)
            await gw.drop()  # mid-answer
            assert await gw.wait("connections", 2) == 2
            gw.push(gw.bot_message("m-2", message(hook, "msg2", "two")))
            gw.push(gw.bot_message("m-3", message(hook, "msg1", "one")))  # a redelivery after the reconnect
            gw.disconnect()
            assert await gw.wait("connections", 3) == 3
            gw.push(gw.bot_message("m-4", message(hook, "msg4", "four")))
            await gw.wait("acks", 4)
            await wait_posts(hook, 3)
            ready = (await c.get(f"{url}/readyz")).json()
    assert sorted(texts(hook)) == ["echo: four", "echo: one", "echo: two"]
    assert ready["connections"]["ding"]["reconnects"] == 2 and len(gw.opens) == 3


def test_stream_mode_needs_a_client_id():
    with pytest.raises(ConfigError, match="mode: stream needs client_id"):
        parse_config({"platforms": {"ding": {"kind": "dingtalk", "mode": "stream", "app_secret": SECRET}}}, {})


async def test_answers_stream_into_an_ai_card(tmp_path):
    async with FakeStreamGateway() as gw, FakeWebhook() as hook:
        card = app(tmp_path, gw.base, delay=0.2, card_template_id="tpl-ai-1", card_update_interval=0)
        async with serve_asgi(card):
            await gw.wait("connections", 1)
            gw.push(gw.bot_message("m-1", message(hook, "msgC", "card please")))
            for _ in range(500):
                if any(path == "/v1.0/card/instances" and method == "PUT" for method, path, _ in gw.cards):
                    break
                await asyncio.sleep(0.02)
    calls = gw.cards
    (create,) = [b for m, p, b in calls if p == "/v1.0/card/instances/createAndDeliver"]
    staff = message(hook, "msgC", "x")["senderStaffId"]
    assert create["cardTemplateId"] == "tpl-ai-1" and create["openSpaceId"] == f"dtv1.card//IM_ROBOT.{staff}"
    assert create["cardData"]["cardParamMap"] == {"content": "", "flowStatus": "1"}
    streamed = [b for m, p, b in calls if p == "/v1.0/card/streaming"]
    assert streamed[-1]["content"] == "echo: card please" and streamed[-1]["isFinalize"] is True
    assert all(b["outTrackId"] == create["outTrackId"] and b["key"] == "content" for b in streamed)
    (finish,) = [b for m, p, b in calls if m == "PUT" and p == "/v1.0/card/instances"]
    assert finish["cardData"]["cardParamMap"] == {"content": "echo: card please", "flowStatus": "3"}
    assert hook.posts == []  # the card is the answer: no sessionWebhook message
    assert gw.tokens_issued == 1  # the access token is cached


def test_ai_cards_need_stream_mode():
    ding = {"kind": "dingtalk", "app_secret": SECRET, "card_template_id": "tpl"}
    with pytest.raises(ConfigError, match="card_template_id needs mode: stream"):
        parse_config({"platforms": {"ding": ding}}, {})
