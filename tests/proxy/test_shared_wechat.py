"""WeChat behind a load balancer: two `python -m proxy serve` processes on one redis-server, and a
client playing WeChat with its real timing — it waits 5 s for a passive reply, drops the
connection and delivers the same message again, 3 deliveries in all, each to the other instance.

What must hold: the delivery that is open when the answer is ready gets it, whichever instance
made it; an answer that misses every delivery goes through the customer-service API exactly
once; "1" on one instance serves what the other kept; one generation per message.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.texts import BUNDLES
from tests.fakes.openai_upstream import FakeOpenAI
from tests.instances import serving
from tests.platforms.wechat_mp.wechat_kit import (
    APP_ID,
    APP_SECRET,
    GH_ID,
    OPENID,
    TOKEN,
    FakeWeChatAPI,
    fields,
    payload,
    signed_query,
)

WECHAT_WAIT = 5.0  # WeChat's wait for a passive reply before it delivers again


def config(redis: str, upstream: str, wechat_api: str, *, secret: bool) -> dict[str, Any]:
    wx: dict[str, Any] = {"kind": "wechat_mp", "token": TOKEN, "app_id": APP_ID, "api_base": wechat_api}
    wx["reply_wait"] = 4.0  # a second of margin before WeChat's 5 s on a busy test machine
    if secret:
        wx["app_secret"] = APP_SECRET
    return {
        "store": {"url": redis},
        "providers": {"up": {"kind": "openai", "base_url": upstream, "api_key": "sk-up", "read_timeout": 60}},
        "platforms": {"wx": wx},
        "channels": [{"name": "demo", "providers": ["up"], "history": 0}],
    }


async def deliver(client: httpx.AsyncClient, url: str, body: bytes) -> str | None:
    """One delivery as WeChat makes it: the passive reply's text, "success", or None when no
    reply came within WeChat's wait (WeChat drops the connection and delivers again)."""
    try:
        resp = await client.post(
            f"{url}/hooks/wx", params=signed_query(openid=OPENID), content=body, timeout=WECHAT_WAIT
        )
    except httpx.ReadTimeout:
        return None
    assert resp.status_code == 200, resp.text
    if resp.text in ("success", ""):
        return resp.text
    f = fields(resp.content)
    assert (f["ToUserName"], f["FromUserName"], f["MsgType"]) == (OPENID, GH_ID, "text")
    return f["Content"]


async def deliveries(client: httpx.AsyncClient, urls: list[str], body: bytes) -> list[str | None]:
    """WeChat's three deliveries of one message, alternating between the instances, stopping at
    the first one that gets a reply."""
    got: list[str | None] = []
    for i in range(3):
        got.append(await deliver(client, urls[i % 2], body))
        if got[-1] is not None:
            break
    return got


@pytest.fixture
def redis(redis_url: str) -> str:
    return f"{redis_url}?prefix=wx{uuid.uuid4().hex[:8]}"


async def test_the_answer_made_on_one_instance_goes_out_on_the_retry_that_reached_the_other(redis: str, tmp_path: Path):
    async with FakeOpenAI(answer="made on A, sent by B") as up, FakeWeChatAPI() as api:
        up.hang(WECHAT_WAIT + 2)  # ready while the second delivery (on B) waits
        cfg = config(redis, up.base_url, api.base_url, secret=True)
        async with serving(tmp_path, "a", cfg) as a, serving(tmp_path, "b", cfg) as b:
            async with httpx.AsyncClient() as client:
                got = await deliveries(client, [a, b], payload("text", Content="slow one", MsgId="7001"))
        assert got == [None, "made on A, sent by B"]
        assert api.sends == []  # not also through the customer-service API
        assert len(up.chat_requests()) == 1  # generated once, by the instance that took the message


async def test_an_answer_that_misses_every_delivery_is_pushed_once(redis: str, tmp_path: Path):
    async with FakeOpenAI(answer="too slow for any delivery") as up, FakeWeChatAPI() as api:
        up.hang(3 * WECHAT_WAIT + 1)
        cfg = config(redis, up.base_url, api.base_url, secret=True)
        async with serving(tmp_path, "a", cfg) as a, serving(tmp_path, "b", cfg) as b:
            async with httpx.AsyncClient() as client:
                got = await deliveries(client, [a, b], payload("text", Content="slower", MsgId="7002"))
                assert got == [None, None, "success"]  # the last delivery (on A) hands it off
                for _ in range(400):
                    if api.sends:
                        break
                    await asyncio.sleep(0.05)
                # a sentinel through B: answered at once, and anything due has happened by then
                up.answer = "sentinel"
                assert await deliver(client, b, payload("text", Content="next", MsgId="7003")) == "sentinel"
        assert api.texts == ["too slow for any delivery"]
        assert len(up.chat_requests()) == 2


async def test_without_a_secret_1_on_the_other_instance_serves_the_kept_answer(redis: str, tmp_path: Path):
    async with FakeOpenAI(answer="kept for one") as up, FakeWeChatAPI() as api:
        up.hang(3 * WECHAT_WAIT + 1)
        cfg = config(redis, up.base_url, api.base_url, secret=False)
        async with serving(tmp_path, "a", cfg) as a, serving(tmp_path, "b", cfg) as b:
            async with httpx.AsyncClient() as client:
                got = await deliveries(client, [a, b], payload("text", Content="later", MsgId="7004"))
                assert got == [None, None, BUNDLES["zh"]["wechat_coming"]]  # WeChat speaks zh by default
                served = ""
                for i in range(100):  # "1" to B, whose neighbour made the answer
                    served = await deliver(client, b, payload("text", Content="1", MsgId=f"71{i:02d}")) or ""
                    if served == "kept for one":
                        break
                    await asyncio.sleep(0.1)
        assert served == "kept for one"
        assert len(up.chat_requests()) == 1 and api.sends == []
