"""Feishu/Lark through the real app: plain and encrypted events in, the exact API calls out."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from platforms.feishu_crypto import decrypt, encrypt, signature
from proxy.app import create_app
from proxy.config import parse_config
from tests.servers import serve_aiohttp, serve_asgi

TOKEN, KEY = "v-token-123", "encrypt-key-456"


class FakeFeishu:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any, str | None]] = []
        self.token_n = 0
        self.invalidate_next = False

    async def __aenter__(self) -> FakeFeishu:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._any)
        self._cm = serve_aiohttp(app)
        self.base = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)

    def of(self, method: str, fragment: str) -> list[Any]:
        return [b for m, p, b, _ in self.calls if m == method and fragment in p]

    async def _any(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        auth = request.headers.get("Authorization")
        if request.path.endswith("/tenant_access_token/internal"):
            assert body == {"app_id": "cli_1", "app_secret": "s3cret"}
            self.token_n += 1
            return web.json_response(
                {"code": 0, "msg": "ok", "tenant_access_token": f"t-{self.token_n}", "expire": 7200}
            )
        if auth != f"Bearer t-{self.token_n}" or self.invalidate_next:
            self.invalidate_next = False
            self.calls.append((request.method + " rejected", request.path, body, auth))
            return web.json_response({"code": 99991663, "msg": "Invalid access token"}, status=400)
        self.calls.append((request.method, request.path, body, auth))
        if request.path == "/open-apis/bot/v3/info":
            return web.json_response({"code": 0, "bot": {"open_id": "ou_bot"}})
        if request.path.endswith("/reply"):
            return web.json_response({"code": 0, "data": {"message_id": f"om_reply_{len(self.calls)}"}})
        return web.json_response({"code": 0, "data": {}})


def event(
    text: str,
    event_id: str,
    message_id: str,
    chat_type: str = "p2p",
    mention_bot: bool = False,
    sender_type: str = "user",
    token: str = TOKEN,
) -> dict[str, Any]:
    mentions = [{"key": "@_user_1", "id": {"open_id": "ou_bot"}, "name": "Bot"}] if mention_bot else []
    return {
        "schema": "2.0",
        "header": {
            "event_id": event_id,
            "event_type": "im.message.receive_v1",
            "create_time": "1",
            "token": token,
            "app_id": "cli_1",
            "tenant_key": "tk",
        },
        "event": {
            "sender": {"sender_id": {"open_id": "ou_user"}, "sender_type": sender_type},
            "message": {
                "message_id": message_id,
                "chat_id": "oc_chat",
                "chat_type": chat_type,
                "message_type": "text",
                "content": orjson.dumps({"text": text}).decode(),
                "mentions": mentions,
            },
        },
    }


@pytest.fixture
async def rig(tmp_path):
    async with FakeFeishu() as api:

        def make(encrypt_key: str | None = None, stream: bool = False):
            return create_app(
                parse_config(
                    {
                        "store": {"url": f"sqlite:///{tmp_path}/f.db"},
                        "providers": {"echo": {"kind": "echo", "delay": 0.05 if stream else 0}},
                        "platforms": {
                            "lark": {
                                "kind": "feishu",
                                "app_id": "cli_1",
                                "app_secret": "s3cret",
                                "verification_token": TOKEN,
                                "encrypt_key": encrypt_key,
                                "api_base": api.base,
                                "stream": stream,
                                "update_interval": 0.05,
                            }
                        },
                        "channels": [{"name": "c", "match": {"platform": "lark"}, "providers": ["echo"]}],
                    },
                    {},
                )
            )

        yield api, make


async def replies(api: FakeFeishu, n: int, patience: float = 5.0) -> list[Any]:
    for _ in range(int(patience / 0.02)):
        if len(api.of("POST", "/reply")) >= n:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    return api.of("POST", "/reply")


def test_crypto_matches_the_documented_scheme():
    blob = encrypt(KEY, b'{"a":1}')
    assert decrypt(KEY, blob) == b'{"a":1}'
    assert signature("1", "n", KEY, b"body") == hashlib.sha256(b"1n" + KEY.encode() + b"body").hexdigest()


async def test_url_verification_plain_and_encrypted(rig):
    _api, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        r = await c.post(f"{url}/hooks/lark", json={"type": "url_verification", "challenge": "ch1", "token": TOKEN})
        assert r.json() == {"challenge": "ch1"}
        assert (
            await c.post(f"{url}/hooks/lark", json={"type": "url_verification", "challenge": "x", "token": "bad"})
        ).status_code == 401
    async with serve_asgi(make(KEY)) as url, httpx.AsyncClient() as c:
        body = {"encrypt": encrypt(KEY, orjson.dumps({"type": "url_verification", "challenge": "ch2", "token": TOKEN}))}
        assert (await c.post(f"{url}/hooks/lark", json=body)).json() == {"challenge": "ch2"}


async def test_p2p_message_answered_once_with_uuid_and_one_token_fetch(rig):
    api, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        for eid, mid in (("e1", "om_1"), ("e1", "om_1"), ("e2", "om_1"), ("e3", "om_3")):  # retry, re-delivery, new
            assert (await c.post(f"{url}/hooks/lark", json=event(f"hello {mid}", eid, mid))).json() == {
                "msg": "success"
            }
        sent = await replies(api, 3, patience=2)
    assert len(sent) == 2
    assert orjson.loads(sent[0]["content"]) == {"text": "echo: hello om_1"} and sent[0]["uuid"] == "om_1-0"
    assert api.token_n == 1  # cached across replies


async def test_group_needs_mention_and_placeholder_is_stripped(rig):
    api, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await c.post(
            f"{url}/hooks/lark", json=event("@_user_1 group q", "g1", "om_g1", chat_type="group", mention_bot=True)
        )
        await c.post(f"{url}/hooks/lark", json=event("chatter", "g2", "om_g2", chat_type="group"))
        await c.post(f"{url}/hooks/lark", json=event("from an app", "g3", "om_g3", sender_type="app"))
        sent = await replies(api, 2, patience=1)
    assert [orjson.loads(s["content"])["text"] for s in sent] == ["echo: group q"]


async def test_encrypted_signed_event_and_tampering(rig):
    api, make = rig
    async with serve_asgi(make(KEY)) as url, httpx.AsyncClient() as c:
        body = orjson.dumps({"encrypt": encrypt(KEY, orjson.dumps(event("secret hi", "s1", "om_s1")))})
        ts, nonce = str(int(time.time())), "nonce-1"
        good = {
            "X-Lark-Request-Timestamp": ts,
            "X-Lark-Request-Nonce": nonce,
            "X-Lark-Signature": signature(ts, nonce, KEY, body),
            "Content-Type": "application/json",
        }
        assert (await c.post(f"{url}/hooks/lark", content=body, headers=good)).status_code == 200
        bad = {**good, "X-Lark-Signature": signature(ts, nonce, "other-key", body)}
        assert (await c.post(f"{url}/hooks/lark", content=body, headers=bad)).status_code == 401
        stale_ts = str(int(time.time()) - 600)
        stale = {
            **good,
            "X-Lark-Request-Timestamp": stale_ts,
            "X-Lark-Signature": signature(stale_ts, nonce, KEY, body),
        }
        assert (await c.post(f"{url}/hooks/lark", content=body, headers=stale)).status_code == 401
        wrong = orjson.dumps({"encrypt": encrypt("not-the-key", orjson.dumps(event("x", "s2", "om_s2")))})
        assert (await c.post(f"{url}/hooks/lark", content=wrong, headers=good)).status_code == 400
        sent = await replies(api, 2, patience=1)
    assert [orjson.loads(s["content"])["text"] for s in sent] == ["echo: secret hi"]


async def test_plain_mode_token_checked(rig):
    api, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        r = await c.post(f"{url}/hooks/lark", json=event("x", "t1", "om_t1", token="forged"))
        assert r.status_code == 401
        assert await replies(api, 1, patience=0.3) == []


async def test_token_refreshed_once_on_invalid_token(rig):
    api, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await c.post(f"{url}/hooks/lark", json=event("a", "r1", "om_r1"))
        await replies(api, 1)
        api.invalidate_next = True
        await c.post(f"{url}/hooks/lark", json=event("b", "r2", "om_r2"))
        sent = await replies(api, 2)
    assert [orjson.loads(s["content"])["text"] for s in sent] == ["echo: a", "echo: b"]
    assert api.token_n == 2 and len(api.of("POST rejected", "/reply")) == 1


async def test_streaming_sends_early_then_edits_to_the_full_answer(rig):
    api, make = rig
    async with serve_asgi(make(stream=True)) as url, httpx.AsyncClient() as c:
        await c.post(f"{url}/hooks/lark", json=event("one two three four five", "st1", "om_st1"))
        for _ in range(200):
            edits = api.of("PUT", "/messages/")
            if edits and orjson.loads(edits[-1]["content"])["text"] == "echo: one two three four five":
                break
            await asyncio.sleep(0.02)
    assert len(api.of("POST", "/reply")) == 1
    assert orjson.loads(api.of("PUT", "/messages/")[-1]["content"])["text"] == "echo: one two three four five"
