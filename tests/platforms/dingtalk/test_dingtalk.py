"""DingTalk through the real app: signed callbacks in, the exact sessionWebhook posts out."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import sqlite3
import time
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from platforms.dingtalk import sign, webhook_problem
from proxy.app import create_app
from proxy.config import parse_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import serve_aiohttp, serve_asgi

SECRET = "dt-app-secret-123"


def headers(ts_ms: int | None = None, secret: str = SECRET) -> dict[str, str]:
    ts = str(int(time.time() * 1000) if ts_ms is None else ts_ms)
    mac = hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()
    return {"timestamp": ts, "sign": base64.b64encode(mac).decode(), "Content-Type": "application/json"}


def test_sign_matches_the_documented_algorithm():
    h = headers(1700000000000)
    assert sign(SECRET, "1700000000000") == h["sign"]


class FakeWebhook:
    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.errcode = 0

    async def __aenter__(self) -> FakeWebhook:
        app = web.Application()

        async def receive(request: web.Request) -> web.Response:
            self.posts.append(await request.json())
            return web.json_response({"errcode": self.errcode, "errmsg": "ok" if not self.errcode else "bad"})

        app.router.add_post("/robot/sendBySession", receive)
        self._cm = serve_aiohttp(app)
        self.url = (await self._cm.__aenter__()) + "/robot/sendBySession?session=abc"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)


def message(text: str, msg_id: str, webhook: str, group: bool = False, msgtype: str = "text", **extra) -> bytes:
    now = int(time.time() * 1000)
    body = {
        "msgtype": msgtype,
        "text": {"content": text},
        "msgId": msg_id,
        "createAt": now,
        "conversationType": "2" if group else "1",
        "conversationId": "cid-group" if group else "cid-u1",
        "senderId": "$:enc:sender",
        "senderStaffId": "staff-1",
        "senderNick": "Ada",
        "sessionWebhook": webhook,
        "sessionWebhookExpiredTime": now + 90 * 60 * 1000,
        **extra,
    }
    return orjson.dumps(body)


@pytest.fixture
async def rig(tmp_path):
    async with FakeWebhook() as hook, FakeOpenAI() as up:

        def make(provider: str = "echo"):
            return create_app(
                parse_config(
                    {
                        "store": {"url": f"sqlite:///{tmp_path}/d.db"},
                        "providers": {
                            "echo": {"kind": "echo"},
                            "gpt": {"kind": "openai", "base_url": up.base_url, "api_key": "k"},
                        },
                        "platforms": {
                            "ding": {
                                "kind": "dingtalk",
                                "app_secret": SECRET,
                                "allow_insecure_webhook_hosts": ["127.0.0.1"],
                            }
                        },
                        "channels": [{"name": "support", "match": {"platform": "ding"}, "providers": [provider]}],
                    },
                    {},
                )
            )

        yield hook, up, make


async def wait_posts(hook: FakeWebhook, n: int, patience: float = 5.0) -> list[dict[str, Any]]:
    for _ in range(int(patience / 0.02)):
        if len(hook.posts) >= n:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    return hook.posts


async def send(c, url, body, h=None):
    return await c.post(f"{url}/hooks/ding", content=body, headers=h or headers())


async def test_direct_message_answered_once_as_markdown(rig):
    hook, _, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        body = message("hello there", "m1", hook.url)
        assert (await send(c, url, body)).status_code == 200
        assert (await send(c, url, body)).status_code == 200  # a duplicate delivery
        posts = await wait_posts(hook, 2, patience=1.0)
    assert len(posts) == 1
    assert posts[0]["msgtype"] == "markdown" and posts[0]["markdown"]["text"] == "echo: hello there"
    assert "at" not in posts[0]


async def test_group_message_trims_mention_and_mentions_sender(rig):
    hook, _, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await send(c, url, message(" @Switchboard  what is up", "m2", hook.url, group=True))
        (post,) = await wait_posts(hook, 1)
    assert post["markdown"]["text"] == "@staff-1 echo: what is up"
    assert post["at"] == {"atUserIds": ["staff-1"], "isAtAll": False}


async def test_duplicate_after_restart_is_not_answered_again(rig):
    hook, _, make = rig
    body = message("once", "m3", hook.url)
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await send(c, url, body)
        await wait_posts(hook, 1)
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await send(c, url, body)
        assert len(await wait_posts(hook, 2, patience=0.5)) == 1


@pytest.mark.parametrize(
    "h",
    [
        lambda: headers(secret="not-the-secret"),
        lambda: headers(ts_ms=int(time.time() * 1000) - 3_600_001),
        lambda: {"Content-Type": "application/json"},
        lambda: {**headers(), "sign": headers()["sign"].lower()},
    ],
)
async def test_bad_sign_or_stale_timestamp_is_401(rig, h):
    hook, _, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        r = await send(c, url, message("x", "m4", hook.url), h())
        assert r.status_code == 401
        assert await wait_posts(hook, 1, patience=0.3) == []


@pytest.mark.parametrize(
    "evil",
    [
        "https://evil.example.com/robot/sendBySession?session=x",
        "http://oapi.dingtalk.com/robot/sendBySession?session=x",
        "https://oapi.dingtalk.com.evil.com/robot/sendBySession",
        "https://oapi.dingtalk.com@evil.com/robot/sendBySession",
        "https://user:pw@oapi.dingtalk.com/robot/sendBySession",
        "https://oapi.dingtalk.com:8443/robot/sendBySession",
        "https://oapi.dingtalk.com/robot/send?access_token=x",
        "http://127.0.0.1:1/other/path",
    ],
)
def test_foreign_webhooks_are_refused(evil):
    assert webhook_problem(evil, ["oapi.dingtalk.com"], ["127.0.0.1"]) is not None
    assert webhook_problem("https://oapi.dingtalk.com/robot/sendBySession?session=x", ["oapi.dingtalk.com"], []) is None


async def test_foreign_or_expired_webhook_means_no_request_and_no_work(rig):
    hook, up, make = rig
    async with serve_asgi(make("gpt")) as url, httpx.AsyncClient() as c:
        await send(c, url, message("x", "m5", hook.url.replace("127.0.0.1", "localhost")))
        expired = message("y", "m6", hook.url, sessionWebhookExpiredTime=int(time.time() * 1000) - 1)
        await send(c, url, expired)
        assert await wait_posts(hook, 1, patience=0.5) == []
    assert up.requests == []  # nothing was generated either


async def test_malformed_body_is_400(rig):
    _hook, _, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        assert (await send(c, url, b"{not json")).status_code == 400
        assert (await send(c, url, b'{"text": {}}')).status_code == 400


async def test_clear_forgets_history_sent_upstream(rig):
    hook, up, make = rig
    async with serve_asgi(make("gpt")) as url, httpx.AsyncClient() as c:
        await send(c, url, message("first", "h1", hook.url))
        await wait_posts(hook, 1)
        await send(c, url, message("second", "h2", hook.url))
        await wait_posts(hook, 2)
        assert [m["content"] for m in up.chat_requests()[-1].json["messages"]] == ["first", "upstream: first", "second"]
        await send(c, url, message("\\clear", "h3", hook.url))
        await wait_posts(hook, 3)
        await send(c, url, message("third", "h4", hook.url))
        await wait_posts(hook, 4)
    assert [m["content"] for m in up.chat_requests()[-1].json["messages"]] == ["third"]
    assert "forgotten" in hook.posts[2]["markdown"]["text"]


async def test_non_text_gets_polite_answer_and_errcode_is_checked(rig, tmp_path):
    hook, _, make = rig
    hook.errcode = 300001
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await send(c, url, message("", "p1", hook.url, msgtype="picture"))
        (post,) = await wait_posts(hook, 1)
    assert "only read text" in post["markdown"]["text"]
    # DingTalk said no (HTTP 200, errcode != 0): the reply is recorded as undelivered
    kv = dict(sqlite3.connect(f"{tmp_path}/d.db").execute("SELECT k, v FROM kv").fetchall())
    assert kv.get("undelivered:ding:p1") == "delivery failed"
