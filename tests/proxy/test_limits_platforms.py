"""Limits for chat-platform users, through the real app and the Synology Chat test kit: a user
over their limit gets one notice per window and no upstream call; other users are not affected."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx

from proxy.app import create_app
from proxy.config import parse_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.platforms.synology.synology_kit import BOT_TOKEN, FakeNAS, form
from tests.servers import serve_asgi

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def settings(nas: str, upstream: str, store: str, limits: dict[str, Any]) -> Any:
    return parse_config(
        {
            "store": {"url": store},
            "providers": {"up": {"kind": "openai", "base_url": upstream, "api_key": "sk-up", "model": "m"}},
            "platforms": {
                "nas": {
                    "kind": "synology",
                    "tokens": [BOT_TOKEN],
                    "api_base": nas,
                    "bot_token": BOT_TOKEN,
                    "send_interval": 0,
                }
            },
            "channels": [{"name": "rest", "providers": ["up"]}],
            "limits": limits,
        },
        {},
    )


async def until_sent(nas: FakeNAS, n: int) -> list[str]:
    for _ in range(250):
        if len(nas.sent) >= n:
            break
        await asyncio.sleep(0.02)
    return [s["payload"]["text"] for s in nas.sent]


async def test_one_notice_per_window_and_no_upstream_call(tmp_path):
    limits = {
        "users": {"*": {"rpm": 2, "request_window": 86400}},
        "platforms": {"nas": {"message": "Slow down: back in {wait}."}},
    }
    async with FakeNAS() as nas, FakeOpenAI() as up:
        app = create_app(settings(nas.base, up.base_url, f"sqlite:///{tmp_path}/s.db", limits))
        async with serve_asgi(app) as url, httpx.AsyncClient() as c:

            async def say(text: str, user: str = "4") -> None:
                body = form("bot_dm", post_id=text, user_id=user, text=text)
                assert (await c.post(f"{url}/hooks/nas", content=body, headers=FORM)).status_code == 200

            for i, text in enumerate(["one", "two", "three"], 1):
                await say(text)
                await until_sent(nas, i)
            await say("four")
            await say("five")
            await say("sentinel", user="5")  # answered after whatever four and five caused
            sent = await until_sent(nas, 4)
    assert sent[:2] == ["upstream: one", "upstream: two"]
    assert re.fullmatch(r"Slow down: back in \d+ (s|min|h)\.", sent[2])
    assert sent[3:] == ["upstream: sentinel"]  # nothing for four and five
    assert len(up.requests) == 3
