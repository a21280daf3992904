"""DingTalk through the real app: signed callbacks in, the exact sessionWebhook posts out."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import orjson
import pytest

from platforms.dingtalk import DingTalkPlatform
from proxy.app import create_app
from proxy.config import parse_config
from proxy.store.sqlite import SQLiteStore
from tests.fakes.openai_upstream import FakeOpenAI
from tests.platforms.dingtalk.dingtalk_kit import SECRET, FakeWebhook, now_ms, payload, signed_headers
from tests.servers import serve_asgi


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
    """What the fake got, once at least `n` posts arrived (at most `patience` s)."""
    for _ in range(int(patience / 0.02)):
        if len(hook.posts) >= n:
            break
        await asyncio.sleep(0.02)
    return hook.posts


async def send(c: httpx.AsyncClient, url: str, body: dict[str, Any] | bytes, h: dict[str, str] | None = None):
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return await c.post(f"{url}/hooks/ding", content=raw, headers=h or signed_headers())


async def exchange(app: Any, messages: list[str]) -> list[str]:
    """Serve `app` (its `ding` platform answering at a fresh FakeWebhook), send each text as a
    direct message in turn, each under a new msgId, and wait for its answer; what the bot said,
    in order."""
    async with FakeWebhook() as hook, serve_asgi(app) as url, httpx.AsyncClient() as c:
        for n, text in enumerate(messages, 1):
            msg_id = f"x{n}-{uuid.uuid4().hex[:12]}"
            body = payload("text_direct", msgId=msg_id, sessionWebhook=hook.url, text={"content": text})
            assert (await send(c, url, body)).status_code == 200
            await wait_posts(hook, n)
        return [p["markdown"]["text"] for p in hook.posts]


async def sentinel(
    c: httpx.AsyncClient, url: str, hook: FakeWebhook, posts: int, n: int = 1, name: str = "text_direct"
) -> list[dict[str, Any]]:
    """Send one more real message (recording `name`, the same chat, a new msgId) and wait until
    its answer arrived. Answers are started in the order their messages came in, so whatever an
    earlier message would have caused has happened by then: exactly `posts` posts, the
    sentinel's answer the last, prove nothing else was sent. Returns the posts before it."""
    text = f"sentinel-{n}"
    body = payload(name, msgId=text, sessionWebhook=hook.url, text={"content": text})
    assert (await send(c, url, body)).status_code == 200

    def answer(p: dict[str, Any]) -> bool:  # "echo: sentinel-1", "upstream: sentinel-1", "@… echo: …"
        return str(p.get("markdown", {}).get("text", "")).endswith(f": {text}")

    for _ in range(int(5.0 / 0.02)):
        if any(answer(p) for p in hook.posts):
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError(f"the sentinel was not answered; posts: {hook.posts}")
    assert len(hook.posts) == posts and answer(hook.posts[-1]), hook.posts
    return hook.posts[:-1]


async def test_direct_message_answered_once_as_markdown(rig):
    hook, _, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        body = payload("text_direct", sessionWebhook=hook.url)
        first = await send(c, url, body)
        assert (first.status_code, first.json()) == (200, {"msgtype": "empty"})
        assert (await send(c, url, body)).status_code == 200  # DingTalk delivering it again
        await wait_posts(hook, 1)
        posts = await sentinel(c, url, hook, 2)
    assert posts == [
        {
            "msgtype": "markdown",
            "markdown": {"title": "echo: What is the…", "text": "echo: What is the capital of France?"},
        }
    ]


async def test_group_message_trims_mention_and_mentions_sender(rig):
    hook, _, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await send(c, url, payload("text_group", sessionWebhook=hook.url))
        posts = await wait_posts(hook, 1)
    assert len(posts) == 1
    assert posts[0]["markdown"]["text"] == "@staff0815 echo: summarise the release notes"
    assert posts[0]["at"] == {"atUserIds": ["staff0815"], "isAtAll": False}


async def test_rich_text_uses_its_text_parts(rig):
    hook, _, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await send(c, url, payload("rich_text", sessionWebhook=hook.url))
        (post,) = await wait_posts(hook, 1)
    assert post["markdown"]["text"] == "@staff0815 echo: what is in this picture? and this one"


async def test_long_answer_is_split_and_sent_in_order(rig, monkeypatch):
    hook, _, make = rig
    monkeypatch.setattr(DingTalkPlatform, "text_limit", 60)
    words = " ".join(f"word{i:03d}" for i in range(40))  # 319 characters
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        body = payload("text_group", sessionWebhook=hook.url, text={"content": f" @Switchboard {words}"})
        await send(c, url, body)
        await wait_posts(hook, 6)
        posts = await sentinel(c, url, hook, 7, name="text_group")
    texts = [p["markdown"]["text"] for p in posts]
    assert len(texts) == 6 and all(len(t) <= 60 + len("@staff0815 ") for t in texts)
    assert texts[0].startswith("@staff0815 echo: word000 ")
    assert " ".join(texts).removeprefix("@staff0815 ") == f"echo: {words}"
    assert [("at" in p) for p in posts] == [True, False, False, False, False, False]
    assert {p["markdown"]["title"] for p in posts} == {"echo: word000 word001…"}


async def test_duplicate_after_restart_is_not_answered_again(rig):
    hook, _, make = rig
    body = payload("text_direct", sessionWebhook=hook.url)
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await send(c, url, body)
        assert len(await wait_posts(hook, 1)) == 1
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        assert (await send(c, url, body)).status_code == 200
        assert len(await sentinel(c, url, hook, 2)) == 1  # the new instance answers new messages only


async def test_bad_sign_or_stale_timestamp_is_401(rig):
    hook, up, make = rig
    bad_headers = {
        "wrong secret": lambda: signed_headers(secret="not-the-secret"),
        "stale": lambda: signed_headers(now_ms() - 3_600_001),
        "missing": lambda: {"content-type": "application/json"},
        "tampered": lambda: {**signed_headers(), "sign": signed_headers()["sign"].lower()},
    }
    async with serve_asgi(make("gpt")) as url, httpx.AsyncClient() as c:
        for n, (why, make_headers) in enumerate(bad_headers.items()):
            r = await send(c, url, payload("text_direct", msgId=f"b{n}", sessionWebhook=hook.url), make_headers())
            assert (r.status_code, r.text) == (401, "unauthorized"), why
        assert await sentinel(c, url, hook, 1) == []
    assert [r.json["messages"][-1]["content"] for r in up.requests] == ["sentinel-1"]  # the sentinel's only


def foreign_webhooks(fake: str) -> list[str]:
    """Webhooks that would reach the loopback fake (so a slip would be seen) or the internet."""
    port = fake.rsplit(":", 1)[1]
    return [
        f"http://localhost:{port}/robot/sendBySession?session=x",
        f"https://127.0.0.1:{port}/robot/sendBySession?session=x",
        f"http://127.0.0.1:{port}/robot/other?session=x",
        f"http://oapi.dingtalk.com@127.0.0.1:{port}/robot/sendBySession",
        f"http://127.0.0.1:{port}#@oapi.dingtalk.com/robot/sendBySession",
        "https://evil.example.com/robot/sendBySession?session=x",
        "http://oapi.dingtalk.com/robot/sendBySession?session=x",
        "https://oapi.dingtalk.com.evil.com/robot/sendBySession",
        "https://oapi.dingtalk.com@evil.com/robot/sendBySession",
    ]


async def test_foreign_or_expired_webhook_means_no_request_and_no_work(rig):
    hook, up, make = rig
    async with serve_asgi(make("gpt")) as url, httpx.AsyncClient() as c:
        for i, evil in enumerate(foreign_webhooks(hook.base)):
            r = await send(c, url, payload("text_direct", msgId=f"evil{i}", sessionWebhook=evil))
            assert r.status_code == 200
        expired = payload("text_direct", msgId="old", sessionWebhook=hook.url, sessionWebhookExpiredTime=now_ms() - 1)
        await send(c, url, expired)
        assert await sentinel(c, url, hook, 1) == []  # and the rig itself works
    assert len(up.chat_requests()) == 1  # nothing was generated for the refused ones


async def test_malformed_body_is_400(rig):
    hook, _, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        assert (await send(c, url, b"{not json")).status_code == 400
        assert (await send(c, url, b'{"text": {}}')).status_code == 400
        assert await sentinel(c, url, hook, 1) == []


async def test_clear_forgets_history_sent_upstream(rig):
    hook, up, make = rig

    def said(text: str, n: int) -> dict[str, Any]:
        return payload("text_direct", msgId=f"h{n}", sessionWebhook=hook.url, text={"content": text})

    async with serve_asgi(make("gpt")) as url, httpx.AsyncClient() as c:
        for n, text in enumerate(["first", "second", "\\clear", "third"], 1):
            await send(c, url, said(text, n))
            await wait_posts(hook, n)
    sent = [[m["content"] for m in r.json["messages"]] for r in up.chat_requests()]
    assert sent == [["first"], ["first", "upstream: first", "second"], ["third"]]
    assert [p["markdown"]["text"] for p in hook.posts] == [
        "upstream: first",
        "upstream: second",
        "好的，我已忘记之前的对话，我们重新开始吧。",  # DingTalk speaks zh unless `locale` says otherwise
        "upstream: third",
    ]


async def test_picture_gets_polite_answer_and_refused_send_is_undelivered(rig, tmp_path):
    hook, _, make = rig
    hook.errcode = 300001  # DingTalk answers HTTP 200 with a non-zero errcode
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await send(c, url, payload("picture", sessionWebhook=hook.url))
        posts = await wait_posts(hook, 1)
    assert [p["markdown"]["text"] for p in posts] == [
        "抱歉，我目前只能阅读文字消息，请用文字发送你的问题。"
    ]
    store = SQLiteStore(f"sqlite:///{tmp_path}/d.db")
    await store.open()
    try:
        assert await store.get("undelivered:ding:msgPic7h2Kd0Lr5Tq8Wv1Xy3Za==") == "delivery failed"
        assert await store.get("undelivered:ding:other") is None
    finally:
        await store.close()


async def test_accepted_send_is_not_marked_undelivered(rig, tmp_path):
    hook, _, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await send(c, url, payload("picture", sessionWebhook=hook.url))
        assert len(await wait_posts(hook, 1)) == 1
    store = SQLiteStore(f"sqlite:///{tmp_path}/d.db")
    await store.open()
    try:
        assert await store.get("undelivered:ding:msgPic7h2Kd0Lr5Tq8Wv1Xy3Za==") is None
    finally:
        await store.close()


async def test_streamed_answer_is_sent_once_when_complete(rig):
    hook, up, make = rig
    up.answer, up.chunk_delay = "# Paris\n\nParis is the **capital** of France.", 0.03
    async with serve_asgi(make("gpt")) as url, httpx.AsyncClient() as c:
        await send(c, url, payload("text_direct", sessionWebhook=hook.url))
        await wait_posts(hook, 1)
        up.answer = None  # the sentinel gets "upstream: sentinel-1"
        posts = await sentinel(c, url, hook, 2)
    assert posts == [
        {
            "msgtype": "markdown",
            "markdown": {"title": "Paris", "text": "# Paris\n\nParis is the **capital** of France."},
        }
    ]
