# ruff: noqa: F811  (the fixtures `make` and `slack` come from test_slack)
"""`thread_context: slack` through the real app: a mention in a thread is answered with the
thread's earlier messages read from the fake Slack API (other people's, named), bounded by the
channel's `history`; the default keeps only the bot's own transcript; an API error falls back."""

from __future__ import annotations

from typing import Any

import httpx

from tests.fakes.openai_upstream import FakeOpenAI
from tests.platforms.slack.fake_slack import FakeSlack
from tests.platforms.slack.slack_kit import BOT_ID, BOT_USER, raw
from tests.platforms.slack.test_slack import calls, final_text, make, post, slack  # noqa: F401
from tests.servers import serve_asgi

THREAD = "1700000201.000200"  # app_mention_thread's thread; the mention itself is at ...305.000500


def thread(slack: FakeSlack) -> None:
    slack.threads[THREAD] = [
        {"type": "message", "user": "U0USER001", "text": "<@U0BOT0001> lists or tuples for 2 < 3?", "ts": THREAD},
        {
            "type": "message",
            "user": BOT_USER,
            "bot_id": BOT_ID,
            "text": "Tuples, if it never changes.",
            "ts": "1700000202.000100",
        },
        {"type": "message", "user": "U0USER003", "text": "I'd say frozensets, actually", "ts": "1700000250.000100"},
        {
            "type": "message",
            "bot_id": "B0OTHER01",
            "bot_profile": {"name": "CI bot"},
            "text": "build #41 passed",
            "ts": "1700000260.000100",
        },
        {
            "type": "message",
            "user": "U0USER002",
            "text": "and what about sets, <@U0BOT0001>?",
            "ts": "1700000305.000500",
        },
        {"type": "message", "user": "U0USER003", "text": "a later message", "ts": "1700000400.000100"},
    ]
    slack.users["U0USER001"] = {
        "id": "U0USER001",
        "name": "ana",
        "profile": {"display_name": "Ana", "real_name": "Ana Li"},
    }
    slack.users["U0USER003"] = {
        "id": "U0USER003",
        "name": "dana",
        "profile": {"display_name": "", "real_name": "Dana K"},
    }


async def asked(make: Any, slack: FakeSlack, history: int | None = None, **platform: Any) -> list[tuple[str, str]]:
    async with FakeOpenAI() as upstream:
        providers = {"gpt": {"kind": "openai", "base_url": upstream.base_url, "api_key": "sk-test", "model": "m"}}
        app = make(providers=providers, channel={"history": history} if history is not None else None, **platform)
        async with serve_asgi(app) as url, httpx.AsyncClient() as c:
            await post(c, url, raw("app_mention_thread"))
            await calls(slack, "chat.postMessage", 1)
            await final_text(slack, lambda t: "sets" in t)
        return [(m["role"], m["content"]) for m in upstream.chat_requests()[0].json["messages"]]


async def test_the_threads_earlier_messages_from_slack_are_the_history(make, slack):
    thread(slack)
    assert await asked(make, slack, thread_context="slack") == [
        ("user", "Ana: lists or tuples for 2 < 3?"),
        ("assistant", "Tuples, if it never changes."),
        ("user", "Dana K: I'd say frozensets, actually"),
        ("user", "CI bot: build #41 passed"),
        ("user", "and what about sets, ?"),
    ]
    assert slack.of("users.info") == [{"user": "U0USER001"}, {"user": "U0USER003"}]  # each name looked up once


async def test_history_bounds_the_thread_read(make, slack):
    thread(slack)
    got = await asked(make, slack, history=1, thread_context="slack")
    assert got == [
        ("user", "Dana K: I'd say frozensets, actually"),
        ("user", "CI bot: build #41 passed"),
        ("user", "and what about sets, ?"),
    ]


async def test_by_default_other_peoples_messages_are_not_read(make, slack):
    thread(slack)
    assert await asked(make, slack) == [("user", "and what about sets, ?")]
    assert slack.of("conversations.replies") == []


async def test_a_slack_error_falls_back_to_the_transcript_and_still_answers(make, slack):
    thread(slack)
    slack.fail("conversations.replies", "missing_scope")
    assert await asked(make, slack, thread_context="slack") == [("user", "and what about sets, ?")]


async def test_a_long_thread_is_read_page_by_page_up_to_the_question(make, slack, monkeypatch):
    monkeypatch.setattr("platforms.slack.thread.PAGE", 2)
    thread(slack)
    later = [
        {"type": "message", "user": "U0USER003", "text": f"later {i}", "ts": f"17000005{i:02}.000100"} for i in range(4)
    ]
    slack.threads[THREAD][1:1] = [
        {"type": "message", "user": "U0GONE001", "text": "hello all", "ts": "1700000201.900000"}
    ]
    slack.threads[THREAD] += later
    got = await asked(make, slack, history=2, thread_context="slack")
    assert got == [
        ("user", "U0GONE001: hello all"),  # users.info does not know them: named by id
        ("assistant", "Tuples, if it never changes."),
        ("user", "Dana K: I'd say frozensets, actually"),
        ("user", "CI bot: build #41 passed"),
        ("user", "and what about sets, ?"),
    ]
    # the question is on the third page of two: the pages after it are not read
    assert [a.get("cursor") for a in slack.of("conversations.replies")] == [None, "2", "4"]
    assert {a["limit"] for a in slack.of("conversations.replies")} == {"2"}


async def test_a_thread_too_long_to_read_up_to_the_question_falls_back(make, slack, monkeypatch):
    monkeypatch.setattr("platforms.slack.thread.PAGE", 2)
    monkeypatch.setattr("platforms.slack.thread.MAX_PAGES", 2)
    thread(slack)  # the question is the fifth message: on a third page
    assert await asked(make, slack, thread_context="slack") == [("user", "and what about sets, ?")]
