"""Feishu's long connection through the real app: Switchboard opens the WebSocket to the fake
Feishu, which pushes event frames made with the official SDK's protobuf classes (lark-oapi), in
one or several parts, records the response frames and the pings, and drops the connection; the
replies that reached the fake open API are counted."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from lark_oapi.ws.pb.pbbp2_pb2 import Frame as SDKFrame

from platforms.feishu import frames
from proxy.app import create_app
from proxy.config import parse_config
from proxy.errors import ConfigError
from tests.platforms.feishu.feishu_kit import APP_ID, APP_SECRET, FakeFeishu, payload, variant
from tests.servers import serve_asgi

P2P = payload("text_p2p")


def app(tmp_path: Path, api: FakeFeishu, delay: float = 0.0) -> Any:
    platform = {
        "kind": "feishu",
        "mode": "websocket",
        "app_id": APP_ID,
        "app_secret": APP_SECRET,
        "api_base": api.base,
        "stream": False,
    }
    return create_app(
        parse_config(
            {
                "store": {"url": f"sqlite:///{tmp_path}/f.db"},
                "providers": {"echo": {"kind": "echo", "delay": delay}},
                "platforms": {"lark": platform},
                "channels": [{"name": "c", "match": {"platform": "lark"}, "providers": ["echo"]}],
            },
            {},
        )
    )


async def answered(api: FakeFeishu, n: int, patience: float = 10.0) -> list[str]:
    for _ in range(int(patience / 0.02)):
        if len(api.replies) >= n:
            break
        await asyncio.sleep(0.02)
    return sorted(c.content()["text"] for c in api.replies)


async def test_events_over_the_long_connection_are_answered_once(tmp_path):
    async with FakeFeishu() as api:
        async with serve_asgi(app(tmp_path, api)) as url, httpx.AsyncClient() as c:
            assert await api.wait("connections", 1) == 1
            api.push_event("m-1", P2P)
            api.push_event("m-2", P2P)  # Feishu's redelivery: the same event
            api.push_event("m-3", variant(P2P, "ev-2", "om_second", text="and Germany?"), parts=3)  # in three frames
            responses = await api.wait("responses", 3)
            got = await answered(api, 2)
            await api.wait("pings", 1, timeout=5)
            ready = (await c.get(f"{url}/readyz")).json()
            hook = await c.post(f"{url}/hooks/lark", json=P2P)
    assert got == ["echo: What is the capital of France?", "echo: and Germany?"]
    assert responses == {"m-1": {"code": 200}, "m-2": {"code": 200}, "m-3": {"code": 200}}
    assert api.response_headers["m-1"]["biz_rt"].isdigit()
    assert api.pings >= 1  # at the interval the endpoint's ClientConfig asked for
    assert ready["connections"]["lark"]["state"] == "connected"
    assert hook.status_code == 403  # long-connection mode: no event URL


async def test_a_dropped_long_connection_is_made_again_without_losing_or_doubling(tmp_path):
    async with FakeFeishu() as api:
        async with serve_asgi(app(tmp_path, api, delay=0.3)):
            await api.wait("connections", 1)
            api.push_event("m-1", P2P)
            await api.wait("responses", 1)
            await api.drop()  # mid-answer
            assert await api.wait("connections", 2) == 2
            api.push_event("m-2", variant(P2P, "ev-2", "om_second", text="and Germany?"))
            api.push_event("m-3", P2P)  # redelivered after the reconnect
            await api.wait("responses", 3)
            got = await answered(api, 2)
    assert got == ["echo: What is the capital of France?", "echo: and Germany?"]
    await asyncio.sleep(0)
    assert len(api.replies) == 2


def test_frames_round_trip_with_the_official_sdk():
    ours = frames.Frame(3, 9, 77, 1, [("type", "event"), ("message_id", "m")], None, None, b'{"x":1}', "log")
    sdk = SDKFrame()
    sdk.ParseFromString(frames.encode(ours))
    assert (sdk.SeqID, sdk.LogID, sdk.service, sdk.method, sdk.payload, sdk.LogIDNew) == (
        3,
        9,
        77,
        1,
        b'{"x":1}',
        "log",
    )
    assert [(h.key, h.value) for h in sdk.headers] == ours.headers
    assert frames.decode(sdk.SerializeToString()) == ours


def test_webhook_mode_still_needs_the_verification_token():
    with pytest.raises(ConfigError, match="verification_token"):
        parse_config({"platforms": {"lark": {"kind": "feishu", "app_id": APP_ID, "app_secret": APP_SECRET}}}, {})
