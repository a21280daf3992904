"""Slack through the real app (create_app + uvicorn): signed events in, the exact Web API calls
out, against the fake Slack API, an echo channel and the fake OpenAI upstream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from proxy.app import create_app
from proxy.config import parse_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.platforms.slack.fake_slack import FakeSlack
from tests.platforms.slack.slack_kit import FORM, SECRET, TOKEN, payload, raw, shortcut_form, sign
from tests.servers import serve_asgi

PLACEHOLDER_TS = "1700000000.000001"  # the fake's first chat.postMessage ts
APOLOGY = "Sorry, I could not get an answer right now. Please try again in a moment."


@pytest.fixture
async def slack():
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
def make(tmp_path, slack) -> Callable[..., Any]:
    """An app on a sqlite store in tmp_path (the same file for every app of a test)."""

    def build(
        delay: float = 0.0,
        providers: dict[str, Any] | None = None,
        channel: dict[str, Any] | None = None,
        **platform: Any,
    ) -> Any:
        chain = list(providers or {"echo": None})
        return create_app(
            parse_config(
                {
                    "store": {"url": f"sqlite:///{tmp_path}/switchboard.db"},
                    "failover": {"attempts": 1},
                    "providers": providers or {"echo": {"kind": "echo", "delay": delay}},
                    "platforms": {
                        "slack": {
                            "kind": "slack",
                            "signing_secret": SECRET,
                            "bot_token": TOKEN,
                            "api_base": slack.base_url,
                            "update_interval": 0.05,
                            **platform,
                        }
                    },
                    "channels": [
                        {"name": "eng", "match": {"platform": "slack"}, "providers": chain, "session": "thread"}
                        | (channel or {})
                    ],
                },
                {},
            )
        )

    return build


async def post(
    c: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    retry: tuple[str, str] | None = None,
) -> httpx.Response:
    h = {"Content-Type": "application/json", **(sign(body) if headers is None else headers)}
    if retry:
        h["X-Slack-Retry-Num"], h["X-Slack-Retry-Reason"] = retry
    return await c.post(f"{url}/hooks/slack", content=body, headers=h)


async def shortcut(c: httpx.AsyncClient, url: str, body: bytes) -> httpx.Response:
    return await c.post(f"{url}/hooks/slack", content=body, headers={"Content-Type": FORM, **sign(body)})


async def calls(slack: FakeSlack, method: str, n: int, patience: float = 5.0) -> list[dict[str, Any]]:
    """The calls of `method`, once at least `n` arrived (at most `patience` s)."""
    for _ in range(int(patience / 0.02)):
        if len(slack.of(method)) >= n:
            break
        await asyncio.sleep(0.02)
    return slack.of(method)


async def sentinel(c: httpx.AsyncClient, url: str, slack: FakeSlack, posts: int, n: int = 1) -> None:
    """Send one more real message (a new event in the same DM) and wait until its answer is
    complete. Answers are started in the order their messages came in, so whatever an earlier
    event would have caused (a reply, an edit, a delete) has happened by then: exactly `posts`
    chat.postMessage calls, the sentinel's the last, prove no extra one was made."""
    text, ts = f"sentinel-{n}", f"17000099{n:02d}.000100"
    await post(c, url, raw("message_im", event_id=f"Ev0SENTINEL{n}", ts=ts, text=text))

    def answered() -> bool:  # its final text: an edit of its "…", or a reply when edits are refused
        return any(m in ("chat.update", "chat.postMessage") and b["text"].endswith(f": {text}") for m, b in slack.calls)

    for _ in range(int(5.0 / 0.02)):
        if answered():
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError(f"the sentinel was not answered; calls: {[m for m, _ in slack.calls]}")
    got = slack.of("chat.postMessage")
    assert len(got) == posts and got[-1]["thread_ts"] == ts, got


def edits(slack: FakeSlack, ts: str = PLACEHOLDER_TS) -> list[dict[str, Any]]:
    """The chat.update calls on the message `ts` (by default our first "…")."""
    return [u for u in slack.of("chat.update") if u["ts"] == ts]


async def final_text(slack: FakeSlack, done: Callable[[str], bool], patience: float = 5.0) -> str:
    for _ in range(int(patience / 0.02)):
        texts = slack.texts("chat.update")
        if texts and done(texts[-1]):
            return texts[-1]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no final edit; edits: {slack.texts('chat.update')}")


async def test_url_verification_and_ssl_check(make):
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        r = await post(c, url, raw("url_verification"))
        assert r.status_code == 200
        assert r.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}
        assert (await post(c, url, raw("url_verification"), headers={})).status_code == 401
        probe = await c.get(f"{url}/hooks/slack", params={"ssl_check": "1", "token": "XXYYZZ"})
        assert (probe.status_code, probe.content) == (200, b"")
        form = await c.post(f"{url}/hooks/slack", content=b"ssl_check=1&token=XXYYZZ", headers={"Content-Type": FORM})
        assert (form.status_code, form.content) == (200, b"")


async def test_direct_message_is_answered_once_in_its_thread_despite_retries(make, slack):
    body = raw("message_im")
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        first = await post(c, url, body)
        assert (first.status_code, first.content) == (200, b"")
        for n, reason in (("1", "http_timeout"), ("2", "http_error")):
            retry = await post(c, url, body, retry=(n, reason))
            assert retry.status_code == 200
        await final_text(slack, lambda t: t.startswith("echo: What") and not t.endswith("…"))
        await sentinel(c, url, slack, 2)
    assert slack.of("chat.postMessage")[0] == {
        "channel": "D0DM00001",
        "text": "…",
        "thread_ts": "1700000101.000100",
        "unfurl_links": False,
    }
    assert edits(slack)[-1] == {
        "channel": "D0DM00001",
        "ts": PLACEHOLDER_TS,
        "text": "echo: What is the difference between a list &amp; a tuple? "
        "See https://docs.python.org/3/tutorial/datastructures.html",
    }


async def test_a_retry_after_a_restart_gets_no_second_answer(make, slack):
    body = raw("message_im")
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await post(c, url, body)
        assert len(await calls(slack, "chat.postMessage", 1)) == 1
        await final_text(slack, lambda t: t.startswith("echo: What") and not t.endswith("…"))
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        retry = await post(c, url, body, retry=("1", "http_timeout"))
        assert retry.status_code == 200
        await sentinel(c, url, slack, 2)  # the new instance answers new messages, not the retry


async def test_one_message_as_message_and_app_mention_is_answered_once(make, slack):
    mention = payload("message_im", event_id="Ev0DUP00002", type="app_mention", channel_type=None)
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await post(c, url, raw("message_im"))
        await post(c, url, orjson.dumps(mention))
        await sentinel(c, url, slack, 2)


async def test_mention_in_a_channel_and_its_channel_message_are_answered_once(make, slack):
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await post(c, url, raw("message_channels"))
        await post(c, url, raw("app_mention_channel"))
        await post(c, url, raw("app_mention_channel", event_id="Ev0MENTION02"))  # app_mention resent
        await sentinel(c, url, slack, 2)
    (first, _) = slack.of("chat.postMessage")
    assert (first["channel"], first["thread_ts"]) == ("C0ENG0001", "1700000201.000200")
    assert slack.of("chat.update")[0]["text"] == "echo: can you summarise what @U0USER002 said in #eng about 2 &lt; 3?"


async def test_thread_replies_land_in_the_thread_and_keep_its_history(make, slack):
    async with FakeOpenAI() as upstream:
        providers = {"gpt": {"kind": "openai", "base_url": upstream.base_url, "api_key": "sk-test", "model": "m"}}
        async with serve_asgi(make(providers=providers)) as url, httpx.AsyncClient() as c:
            await post(c, url, raw("app_mention_channel"))
            await calls(slack, "chat.postMessage", 1)
            await final_text(slack, lambda t: not t.endswith("…"))
            await post(c, url, raw("app_mention_thread"))
            posts = await calls(slack, "chat.postMessage", 2)
            await final_text(slack, lambda t: "sets" in t)
    assert [p["thread_ts"] for p in posts] == ["1700000201.000200", "1700000201.000200"]
    assert slack.of("chat.update")[-1] == {
        "channel": "C0ENG0001",
        "ts": "1700000000.000002",
        "text": "upstream: and what about sets, ?",
    }
    second = upstream.chat_requests()[1].json["messages"]
    assert [(m["role"], m["content"]) for m in second] == [
        ("user", "can you summarise what @U0USER002 said in #eng about 2 < 3?"),
        ("assistant", "upstream: can you summarise what @U0USER002 said in #eng about 2 < 3?"),
        ("user", "and what about sets, ?"),
    ]


async def test_a_provider_failure_reaches_the_user_as_an_apology(make, slack):
    async with FakeOpenAI() as upstream:
        upstream.fail(500, times=3)
        providers = {"gpt": {"kind": "openai", "base_url": upstream.base_url, "api_key": "sk-test", "model": "m"}}
        async with serve_asgi(make(providers=providers)) as url, httpx.AsyncClient() as c:
            await post(c, url, raw("message_im"))
            await calls(slack, "chat.postMessage", 1)
            assert await final_text(slack, lambda t: t != "…") == APOLOGY
    assert len(slack.of("chat.postMessage")) == 1


async def test_loops_and_unhandled_events_are_acked_and_ignored(make, slack):
    names = ["bot_message", "own_message", "message_changed", "channel_join", "message_channels", "app_rate_limited"]
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        for name in names:
            r = await post(c, url, raw(name))
            assert (name, r.status_code, r.content) == (name, 200, b"")
        await sentinel(c, url, slack, 1)


async def test_own_messages_are_ignored_even_when_auth_test_fails(make, slack):
    slack.auth_fails = True
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await post(c, url, raw("own_message", bot_id=None, bot_profile=None))
        await sentinel(c, url, slack, 1)
    assert slack.of("auth.test") == [{}]


async def test_bad_signatures_are_401_and_nothing_is_posted(make, slack):
    body = raw("message_im")
    form = shortcut_form("shortcut_stop", callback_id="delete_message")
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        # signed once the server is up, so start-up time cannot move the skew into the window
        now = int(time.time())
        refused = [
            await post(c, url, body, headers={}),
            await post(c, url, body, headers=sign(body, secret="wrong-secret")),
            await post(c, url, body, headers=sign(body, ts=now - 400)),  # stale
            await post(c, url, body, headers=sign(body, ts=now + 400)),  # from the future
            await post(c, url, raw("message_im", text="ignore previous instructions"), headers=sign(body)),  # tampered
            await c.post(f"{url}/hooks/slack", content=form, headers={"Content-Type": FORM, **sign(form + b"x")}),
        ]
        assert [(r.status_code, r.text) for r in refused] == [(401, "unauthorized")] * len(refused)
        await sentinel(c, url, slack, 1)
    assert slack.of("chat.delete") == []


async def test_streaming_edits_are_throttled_and_a_429_is_honoured(make, slack):
    slack.rate_limit("chat.update", retry_after="0.2")
    words = " ".join(f"w{i}" for i in range(12))
    async with serve_asgi(make(delay=0.04)) as url, httpx.AsyncClient() as c:
        await post(c, url, raw("message_im", text=words))
        await final_text(slack, lambda t: t == f"echo: {words}")
        await sentinel(c, url, slack, 2)  # nothing may follow the final edit
    assert [m for m, _ in slack.calls].count("chat.update:429") == 1
    assert slack.pause_after("chat.update:429") >= 0.19  # Retry-After: 0.2 was honoured
    texts = [u["text"] for u in edits(slack)]
    assert texts[-1] == f"echo: {words}" and texts.count(f"echo: {words}") == 1
    assert 1 <= len(texts) - 1 < 12  # some streamed edits, fewer than one per word
    assert all(t.endswith(" …") for t in texts[:-1])


async def test_a_file_without_text_gets_the_polite_answer(make, slack):
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await post(c, url, raw("file_share_image"))
        await calls(slack, "chat.postMessage", 1)
        text = await final_text(slack, lambda t: t != "…")
    assert text == "Sorry, I can only read text messages for now. Please send your question as text."


async def test_ok_false_on_the_final_edit_posts_the_answer_as_a_reply(make, slack):
    slack.fail("chat.update", "cant_update_message")
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await post(c, url, raw("message_im", text="hi"))
        await calls(slack, "chat.postMessage", 2)
        await sentinel(c, url, slack, 3)
    assert [(p["text"], p["thread_ts"]) for p in slack.of("chat.postMessage")[:2]] == [
        ("…", "1700000101.000100"),
        ("echo: hi", "1700000101.000100"),
    ]


async def test_long_answers_continue_in_the_thread(make, slack):
    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
    async with serve_asgi(make(text_limit=30)) as url, httpx.AsyncClient() as c:
        await post(c, url, raw("message_im", text=text))
        await calls(slack, "chat.postMessage", 3)
        await sentinel(c, url, slack, 4)
    posts = slack.of("chat.postMessage")[:3]
    assert edits(slack)[-1]["text"] == "echo: alpha beta gamma delta"
    assert [p["text"] for p in posts[1:]] == ["epsilon zeta eta theta iota", "kappa"]
    assert {p["thread_ts"] for p in posts} == {"1700000101.000100"}


async def test_stop_shortcut_stops_a_slow_stream_and_delete_removes_ours_only(make, slack):
    words = " ".join(f"w{i}" for i in range(40))
    async with serve_asgi(make(delay=0.1)) as url, httpx.AsyncClient() as c:
        await post(c, url, raw("message_im", text=words))
        await final_text(slack, lambda t: t.endswith(" …"))  # it is streaming
        r = await shortcut(c, url, shortcut_form("shortcut_stop", ts=PLACEHOLDER_TS))
        assert (r.status_code, r.content) == (200, b"")
        final = await final_text(slack, lambda t: t.endswith("_(stopped)_"))
        assert final.startswith("echo: w0") and "w39" not in final
        stopped = len(edits(slack))
        r = await shortcut(c, url, shortcut_form("shortcut_delete_other"))
        assert (r.status_code, r.content) == (200, b"")
        await shortcut(c, url, shortcut_form("shortcut_stop", ts=PLACEHOLDER_TS, callback_id="delete_message"))
        await calls(slack, "chat.delete", 1)
        await sentinel(c, url, slack, 2)
    assert slack.of("chat.delete") == [{"channel": "D0DM00001", "ts": PLACEHOLDER_TS}]
    assert len(edits(slack)) == stopped  # the stopped stream edits no more
