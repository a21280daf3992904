"""Slack through the real app: signed events in, the exact Web API calls out."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from urllib.parse import urlencode

import httpx
import orjson
import pytest
from slack_sdk.signature import SignatureVerifier

from platforms.slack import signature
from proxy.app import create_app
from proxy.config import parse_config
from tests.platforms.slack.fake_slack import FakeSlack
from tests.servers import serve_asgi

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


def sign(body: bytes, ts: int | None = None, secret: str = SECRET) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    mac = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": f"v0={mac}"}


def test_signature_matches_doc_and_slack_sdk():
    body, ts = b'{"type":"event_callback"}', str(int(time.time()))
    ours = signature(SECRET, ts, body)
    assert ours == sign(body, int(ts))["X-Slack-Signature"]
    assert SignatureVerifier(SECRET).is_valid(body, ts, ours)


def im(text: str, event_id: str = "Ev1", ts: str = "1700000001.000100", **extra) -> bytes:
    ev = {"type": "message", "channel_type": "im", "channel": "D1", "user": "U1", "text": text, "ts": ts, **extra}
    return orjson.dumps(
        {
            "type": "event_callback",
            "event_id": event_id,
            "event": ev,
            "authorizations": [{"user_id": "UBOT", "is_bot": True}],
        }
    )


def mention(text: str, event_id: str, ts: str, thread_ts: str | None = None) -> bytes:
    ev = {"type": "app_mention", "channel": "C1", "user": "U2", "text": text, "ts": ts}
    if thread_ts:
        ev["thread_ts"] = thread_ts
    return orjson.dumps({"type": "event_callback", "event_id": event_id, "event": ev})


@pytest.fixture
async def rig(tmp_path):
    async with FakeSlack() as slack:

        def make(delay: float = 0.0):
            return create_app(
                parse_config(
                    {
                        "store": {"url": f"sqlite:///{tmp_path}/s.db"},
                        "providers": {"echo": {"kind": "echo", "delay": delay}},
                        "platforms": {
                            "slack": {
                                "kind": "slack",
                                "signing_secret": SECRET,
                                "bot_token": "xoxb-test",
                                "api_base": slack.base_url,
                                "update_interval": 0.05,
                            }
                        },
                        "channels": [
                            {"name": "eng", "match": {"platform": "slack"}, "providers": ["echo"], "session": "thread"}
                        ],
                    },
                    {},
                )
            )

        yield slack, make


async def post(
    c: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str] | None = None, **kw
) -> httpx.Response:
    h = {"Content-Type": "application/json", **(headers if headers is not None else sign(body)), **kw}
    return await c.post(f"{url}/hooks/slack", content=body, headers=h)


async def settle(slack: FakeSlack, method: str, n: int, patience: float = 5.0) -> list[dict]:
    """Wait until `n` calls of `method` arrived (at most `patience` s), then a little longer to
    prove no extra one follows."""
    for _ in range(int(patience / 0.02)):
        if len(slack.of(method)) >= n:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.15)
    return slack.of(method)


async def test_url_verification_and_ssl_check(rig):
    _slack, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        body = orjson.dumps({"type": "url_verification", "challenge": "abc123", "token": "x"})
        r = await post(c, url, body)
        assert r.status_code == 200 and r.json() == {"challenge": "abc123"}
        assert (await c.get(f"{url}/hooks/slack", params={"ssl_check": "1"})).status_code == 200


async def test_direct_message_answered_once_in_its_thread_despite_retries(rig):
    slack, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        body = im("hello there")
        assert (await post(c, url, body)).status_code == 200
        assert (
            await post(c, url, body, **{"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
        ).status_code == 200
        posts = await settle(slack, "chat.postMessage", 1)
        updates = slack.of("chat.update")
    assert len(posts) == 1 and posts[0]["channel"] == "D1" and posts[0]["thread_ts"] == "1700000001.000100"
    assert updates[-1]["text"] == "echo: hello there" and updates[-1]["ts"] == "1700000000.000001"


async def test_retry_after_restart_gets_no_second_answer(rig):
    slack, make = rig
    body = im("once", event_id="EvR")
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await post(c, url, body)
        await settle(slack, "chat.postMessage", 1)
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await post(c, url, body, **{"X-Slack-Retry-Num": "2"})
        assert len(await settle(slack, "chat.postMessage", 2, patience=0.5)) == 1


async def test_same_message_as_two_events_is_answered_once(rig):
    slack, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await post(c, url, mention("<@UBOT> hi", "EvA", "1700000002.000200"))
        await post(c, url, mention("<@UBOT> hi", "EvB", "1700000002.000200"))
        posts = await settle(slack, "chat.postMessage", 2, patience=0.5)
    assert len(posts) == 1
    assert slack.of("chat.update")[-1]["text"] == "echo: hi"  # mention token stripped


async def test_thread_reply_goes_to_the_thread_root(rig):
    slack, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await post(c, url, mention("<@UBOT> more", "EvT", "1700000003.000300", thread_ts="1700000000.999999"))
        posts = await settle(slack, "chat.postMessage", 1)
    assert posts[0]["thread_ts"] == "1700000000.999999" and posts[0]["channel"] == "C1"


@pytest.mark.parametrize(
    "body",
    [
        im("from a bot", event_id="Ev2", bot_id="B9"),
        im("edited", event_id="Ev3", subtype="message_changed"),
        im("ourselves", event_id="Ev4", user="UBOT"),
        orjson.dumps(
            {
                "type": "event_callback",
                "event_id": "Ev5",
                "event": {
                    "type": "message",
                    "channel_type": "channel",
                    "channel": "C1",
                    "user": "U1",
                    "text": "x",
                    "ts": "1.1",
                },
            }
        ),
    ],
)
async def test_loops_and_unhandled_events_are_ignored(rig, body):
    slack, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        assert (await post(c, url, body)).status_code == 200
        assert await settle(slack, "chat.postMessage", 1, patience=0.5) == []


@pytest.mark.parametrize(
    "secret,skew,drop", [("wrong-secret", 0, False), (SECRET, -400, False), (SECRET, 400, False), (SECRET, 0, True)]
)
async def test_bad_signatures_are_401_and_nothing_is_posted(rig, secret, skew, drop):
    slack, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        # signed once the server is up, so start-up time cannot move the skew into the window
        headers = {} if drop else sign(im("x"), ts=int(time.time()) + skew, secret=secret)
        r = await post(c, url, im("x"), headers=headers)
        assert r.status_code == 401 and r.text == "unauthorized"
        assert await settle(slack, "chat.postMessage", 1, patience=0.5) == []


async def test_tampered_body_is_401(rig):
    _slack, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        r = await post(c, url, im("evil"), headers=sign(im("fine")))
        assert r.status_code == 401


async def test_streaming_edits_and_429_on_update(rig):
    slack, make = rig
    slack.rate_limit_next["chat.update"] = 1
    async with serve_asgi(make(delay=0.06)) as url, httpx.AsyncClient() as c:
        await post(c, url, im("one two three four five six", event_id="EvS"))
        await settle(slack, "chat.postMessage", 1)
        for _ in range(150):
            if slack.of("chat.update") and slack.of("chat.update")[-1]["text"] == "echo: one two three four five six":
                break
            await asyncio.sleep(0.02)
    updates = [u["text"] for u in slack.of("chat.update")]
    assert any(m == "chat.update:429" for m, _ in slack.calls)  # was rate-limited once ...
    assert len(updates) >= 2 and updates[-1] == "echo: one two three four five six"  # ... and still finished


async def test_file_without_text_gets_polite_answer(rig):
    slack, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await post(c, url, im("", event_id="EvF", subtype="file_share", files=[{"mimetype": "image/png"}]))
        await settle(slack, "chat.postMessage", 1)
    assert "only read text" in slack.of("chat.update")[-1]["text"]


def shortcut(callback: str, ts: str, user: str = "UBOT") -> bytes:
    payload = {
        "type": "message_action",
        "callback_id": callback,
        "channel": {"id": "D1"},
        "message": {"ts": ts, "user": user},
        "trigger_id": "t",
    }
    return urlencode({"payload": orjson.dumps(payload).decode()}).encode()


async def test_stop_shortcut_stops_a_streaming_answer_and_delete_removes_ours_only(rig):
    slack, make = rig
    async with serve_asgi(make(delay=0.1)) as url, httpx.AsyncClient() as c:
        await post(c, url, im(" ".join(f"w{i}" for i in range(40)), event_id="EvX"))
        (_placeholder,) = await settle(slack, "chat.postMessage", 1)
        ts = "1700000000.000001"
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        body = shortcut("stop_generating", ts)
        assert (await c.post(f"{url}/hooks/slack", content=body, headers={**form, **sign(body)})).status_code == 200
        for _ in range(100):
            if slack.of("chat.update") and "(stopped)" in slack.of("chat.update")[-1]["text"]:
                break
            await asyncio.sleep(0.02)
        final = slack.of("chat.update")[-1]["text"]
        assert "(stopped)" in final and "w39" not in final
        other = shortcut("delete_message", "1699999999.000001", user="USOMEONE")
        await c.post(f"{url}/hooks/slack", content=other, headers={**form, **sign(other)})
        body = shortcut("delete_message", ts)
        await c.post(f"{url}/hooks/slack", content=body, headers={**form, **sign(body)})
        deletes = await settle(slack, "chat.delete", 2, patience=0.5)
    assert deletes == [{"channel": "D1", "ts": ts}]
