"""Slack behind a load balancer: two `python -m proxy serve` processes on one redis-server and the
fake Slack API. A stop or delete shortcut that reaches the instance not streaming the answer still
stops it; Slack's retry of an event that reaches the other instance gets no second answer."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.instances import serving
from tests.platforms.slack.fake_slack import FakeSlack
from tests.platforms.slack.slack_kit import SECRET, TOKEN, raw, shortcut_form
from tests.platforms.slack.test_slack import PLACEHOLDER_TS, calls, edits, final_text, post, sentinel, shortcut

WORDS = " ".join(f"w{i}" for i in range(60))


def config(redis: str, slack_api: str) -> dict[str, Any]:
    return {
        "store": {"url": redis},
        "failover": {"attempts": 1},
        "providers": {"echo": {"kind": "echo", "delay": 0.1}},
        "platforms": {
            "slack": {
                "kind": "slack",
                "signing_secret": SECRET,
                "bot_token": TOKEN,
                "api_base": slack_api,
                "update_interval": 0.05,
            }
        },
        "channels": [{"name": "eng", "match": {"platform": "slack"}, "providers": ["echo"], "session": "thread"}],
    }


@pytest.fixture
def redis(redis_url: str) -> str:
    return f"{redis_url}?prefix=s{uuid.uuid4().hex[:8]}"


async def test_stop_pressed_on_the_other_instance_stops_the_answer(redis: str, tmp_path: Path):
    async with FakeSlack() as slack:
        cfg = config(redis, slack.base_url)
        async with serving(tmp_path, "a", cfg) as a, serving(tmp_path, "b", cfg) as b, httpx.AsyncClient() as c:
            await post(c, a, raw("message_im", text=WORDS))
            await final_text(slack, lambda t: t.endswith(" …"), patience=10)  # A is streaming
            r = await shortcut(c, b, shortcut_form("shortcut_stop", ts=PLACEHOLDER_TS))
            assert (r.status_code, r.content) == (200, b"")
            final = await final_text(slack, lambda t: t.endswith("_(stopped)_"), patience=10)
            assert final.startswith("echo: w0") and "w59" not in final
            stopped = len(edits(slack))
            await sentinel(c, a, slack, 2)
        assert len(edits(slack)) == stopped  # the stopped stream edits no more


async def test_delete_pressed_on_the_other_instance_deletes_and_stops(redis: str, tmp_path: Path):
    async with FakeSlack() as slack:
        cfg = config(redis, slack.base_url)
        async with serving(tmp_path, "a", cfg) as a, serving(tmp_path, "b", cfg) as b, httpx.AsyncClient() as c:
            await post(c, a, raw("message_im", text=WORDS))
            await final_text(slack, lambda t: t.endswith(" …"), patience=10)
            form = shortcut_form("shortcut_stop", ts=PLACEHOLDER_TS, callback_id="delete_message")
            assert (await shortcut(c, b, form)).status_code == 200
            assert await calls(slack, "chat.delete", 1) == [{"channel": "D0DM00001", "ts": PLACEHOLDER_TS}]
            await sentinel(c, a, slack, 2)  # A posted nothing more: no rest of the answer
        assert all("w59" not in e["text"] for e in edits(slack))


async def test_a_retry_reaching_the_other_instance_gets_no_second_answer(redis: str, tmp_path: Path):
    async with FakeSlack() as slack:
        cfg = config(redis, slack.base_url)
        cfg["providers"]["echo"]["delay"] = 0.0
        async with serving(tmp_path, "a", cfg) as a, serving(tmp_path, "b", cfg) as b, httpx.AsyncClient() as c:
            body = raw("message_im", text="hello once")
            assert (await post(c, a, body)).status_code == 200
            assert (await post(c, b, body, retry=("1", "http_timeout"))).status_code == 200
            assert (await post(c, b, body, retry=("2", "http_timeout"))).status_code == 200
            await sentinel(c, b, slack, 2)  # one answer for the message, one for the sentinel
        answers = [t for t in slack.texts("chat.update") if t == "echo: hello once"]
        assert answers == ["echo: hello once"]
