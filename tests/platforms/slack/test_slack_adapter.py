"""SlackPlatform on recorded payloads with a tiny fake ctx, and its Web API calls against the
fake Slack API: acks, dedupe, shortcuts, throttled streaming edits, 429s, ok:false, splitting."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import aiohttp
import orjson
import pytest

from platforms.slack import SlackConfig, SlackPlatform
from platforms.slack.events import SlackThread
from proxy.errors import DeliveryError, RequestError, VerificationError
from proxy.types import Inbound
from tests.platforms.slack.fake_slack import FakeSlack
from tests.platforms.slack.slack_kit import (
    BOT_USER,
    FORM,
    SECRET,
    TOKEN,
    FakeCtx,
    ScriptedAnswer,
    payload,
    raw,
    shortcut_form,
    web_request,
)


@pytest.fixture
async def slack():
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def adapter(
    slack: FakeSlack | None = None, http: Any = None, start: bool = True, **config: Any
) -> tuple[SlackPlatform, FakeCtx]:
    ctx = FakeCtx(http)
    base = {"api_base": slack.base_url} if slack else {}
    cfg = SlackConfig(**{"signing_secret": SECRET, "bot_token": TOKEN, "update_interval": 0.05, **base, **config})
    platform = SlackPlatform("slack", cfg, ctx)
    if start and slack:
        await platform.start()
    return platform, ctx


# -- inbound ------------------------------------------------------------------------------


async def test_url_verification_echoes_the_challenge():
    sl, _ = await adapter()
    resp = await sl.handle(web_request(raw("url_verification")))
    assert resp.status == 200
    assert orjson.loads(resp.body) == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}


async def test_unsigned_url_verification_is_refused():
    sl, _ = await adapter()
    with pytest.raises(VerificationError):
        await sl.handle(web_request(raw("url_verification"), headers={}))


async def test_ssl_check_probes_get_an_empty_200():
    sl, ctx = await adapter()
    assert (await sl.handle(web_request(b"", headers={}, ssl_check="1"))).status == 200
    probe = web_request(b"ssl_check=1&token=XXYYZZ", headers={}, content_type=FORM)
    resp = await sl.handle(probe)
    assert (resp.status, resp.body, ctx.submitted) == (200, b"", [])


async def test_message_is_submitted_once_whatever_the_retries():
    sl, ctx = await adapter()
    body = raw("message_im")
    for retry in (None, "1", "2", "3"):
        req = web_request(body)
        if retry:
            req.headers["x-slack-retry-num"] = retry  # type: ignore[index]
        resp = await sl.handle(req)
        assert (resp.status, resp.body) == (200, b"")
    assert [m.event_id for m in ctx.submitted] == ["Ev0IM000001"]
    assert ctx.claimed == {"Ev0IM000001", "msg:D0DM00001:1700000101.000100"}


async def test_one_message_as_two_events_is_submitted_once():
    sl, ctx = await adapter()
    mention = payload("message_im", event_id="Ev0DUP00002", type="app_mention", channel_type=None)
    await sl.handle(web_request(raw("message_im")))
    await sl.handle(web_request(orjson.dumps(mention)))
    assert len(ctx.submitted) == 1


async def test_the_ignored_channel_message_does_not_block_its_app_mention():
    sl, ctx = await adapter()
    await sl.handle(web_request(raw("message_channels")))
    await sl.handle(web_request(raw("app_mention_channel")))
    await sl.handle(web_request(raw("app_mention_channel", event_id="Ev0MENTION02")))  # same message again
    assert [m.event_id for m in ctx.submitted] == ["Ev0MENTION01"]


@pytest.mark.parametrize("name", ["bot_message", "own_message", "message_changed", "channel_join", "app_rate_limited"])
async def test_ignored_events_are_acked_and_not_submitted(name):
    sl, ctx = await adapter()
    assert (await sl.handle(web_request(raw(name)))).status == 200
    assert ctx.submitted == []


@pytest.mark.parametrize("body", [b"not json", b"[]", orjson.dumps({"type": "url_verification"})])
async def test_malformed_json_is_400(body):
    sl, _ = await adapter()
    with pytest.raises(RequestError):
        await sl.handle(web_request(body))


async def test_malformed_forms_are_400_and_slash_commands_get_a_hint():
    sl, _ = await adapter()
    for body in (b"foo=bar", b"payload=%7Bnot-json", b"payload=\xff\xfe"):
        with pytest.raises(RequestError):
            await sl.handle(web_request(body, content_type=FORM))
    resp = await sl.handle(web_request(b"command=%2Fask&text=hi", content_type=FORM))
    assert resp.status == 200 and b"not supported" in resp.body


async def test_forms_are_verified_before_they_are_decoded():
    sl, _ = await adapter()
    with pytest.raises(VerificationError):
        await sl.handle(web_request(b"payload=\xff", headers={}, content_type=FORM))


# -- shortcuts ------------------------------------------------------------------------------


async def test_stop_shortcut_stops_the_job_streaming_into_that_message(slack, http):
    sl, ctx = await adapter(slack, http)
    await sl.handle(web_request(raw("message_im")))
    (job,) = ctx.jobs
    answer = ScriptedAnswer(["Lists", " are", " mutable"], delay=0.2)

    async def stop_when_streaming() -> None:
        await wait_for_placeholder(slack)
        resp = await sl.handle(web_request(shortcut_form("shortcut_stop", ts="1700000000.000001"), content_type=FORM))
        assert (resp.status, resp.body) == (200, b"")
        answer.stop()  # what the core does when job.stop() is called

    stopper = asyncio.create_task(stop_when_streaming())
    await sl.deliver(ctx.submitted[0], answer)
    await stopper
    assert job.stopped == 1
    assert slack.texts("chat.update")[-1] == "Lists\n_(stopped)_"


async def wait_for_placeholder(slack: FakeSlack) -> None:
    for _ in range(250):
        if slack.of("chat.postMessage"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no placeholder was posted")


async def test_stop_shortcut_on_a_finished_answer_does_nothing(slack, http):
    sl, ctx = await adapter(slack, http)
    await sl.handle(web_request(raw("message_im")))
    await sl.deliver(ctx.submitted[0], ScriptedAnswer(["done"]))
    await sl.handle(web_request(shortcut_form("shortcut_stop", ts="1700000000.000001"), content_type=FORM))
    assert ctx.jobs[0].stopped == 0


async def test_delete_shortcut_deletes_our_messages_only(slack, http):
    sl, ctx = await adapter(slack, http)
    await sl.handle(web_request(shortcut_form("shortcut_delete_other"), content_type=FORM))
    # a message our bot posted before a restart: known by its author in the payload
    await sl.handle(web_request(shortcut_form("shortcut_stop", callback_id="delete_message"), content_type=FORM))
    await ctx.settle()
    assert slack.of("chat.delete") == [{"channel": "D0DM00001", "ts": "1700000102.000200"}]


async def test_delete_while_streaming_stops_and_posts_nothing_more(slack, http):
    sl, ctx = await adapter(slack, http)
    await sl.handle(web_request(raw("message_im")))
    answer = ScriptedAnswer(["a", " b", " c", " d"], delay=0.15)

    async def delete_when_streaming() -> None:
        await wait_for_placeholder(slack)
        form = shortcut_form("shortcut_delete_other", ts="1700000000.000001", channel="D0DM00001")
        await sl.handle(web_request(form, content_type=FORM))  # known as ours: we posted it
        await ctx.settle()
        answer.stop()

    deleter = asyncio.create_task(delete_when_streaming())
    await sl.deliver(ctx.submitted[0], answer)
    await deleter
    assert ctx.jobs[0].stopped == 1
    assert slack.of("chat.delete") == [{"channel": "D0DM00001", "ts": "1700000000.000001"}]
    assert len(slack.of("chat.postMessage")) == 1  # the answer is not re-posted elsewhere


# -- outbound -------------------------------------------------------------------------------


def inbound(thread: str = "1700000101.000100") -> Inbound:
    return Inbound("slack", "Ev1", "D0DM00001", "U0USER001", "q", reply_to=SlackThread("D0DM00001", thread))


async def test_identity_comes_from_auth_test_and_its_failure_is_tolerated(slack, http):
    sl, _ = await adapter(slack, http)
    assert (sl.bot_user, sl.bot_id) == (BOT_USER, "B0BOT0001")
    slack.auth_fails = True
    sl2, ctx = await adapter(slack, http)
    assert (sl2.bot_user, sl2.bot_id) == (None, None)
    await sl2.handle(web_request(raw("own_message", bot_id=None, bot_profile=None)))  # envelope says it is us
    assert ctx.submitted == []


async def test_placeholder_then_throttled_edits_then_the_full_answer(slack, http):
    sl, _ = await adapter(slack, http, update_interval=0.2)
    words = [f"w{i} " for i in range(30)]
    await sl.deliver(inbound(), ScriptedAnswer(words, delay=0.02))
    (post,) = slack.of("chat.postMessage")
    assert post == {"channel": "D0DM00001", "text": "…", "thread_ts": "1700000101.000100", "unfurl_links": False}
    updates = slack.of("chat.update")
    assert all(u["ts"] == "1700000000.000001" and u["channel"] == "D0DM00001" for u in updates)
    assert updates[-1]["text"] == "".join(words).strip()
    streamed = [u["text"] for u in updates[:-1]]
    assert streamed and all(t.endswith(" …") for t in streamed)
    assert len(streamed) <= 4  # ~0.6 s of tokens at one edit per 0.2 s, never one per token
    assert set(slack.content_types) == {"application/json; charset=utf-8"}


async def test_a_streaming_edit_hit_by_429_is_skipped_and_the_final_edit_waits(slack, http):
    sl, _ = await adapter(slack, http)
    slack.rate_limit("chat.update", retry_after="0.3")
    await sl.deliver(inbound(), ScriptedAnswer(["one", " two", " three", " four"], delay=0.06))
    assert [m for m, _ in slack.calls].count("chat.update:429") == 1
    assert slack.pause_after("chat.update:429") >= 0.29  # not one edit before Retry-After passed
    assert slack.texts("chat.update")[-1] == "one two three four"


async def test_the_final_edit_retries_after_429(slack, http):
    sl, _ = await adapter(slack, http)
    slack.rate_limit("chat.update", retry_after="0", times=2)
    await sl.deliver(inbound(), ScriptedAnswer(["fast answer"]))
    assert [m for m, _ in slack.calls[1:]] == ["chat.postMessage", "chat.update:429", "chat.update:429", "chat.update"]
    assert slack.texts("chat.update") == ["fast answer"]


async def test_a_long_retry_after_is_not_waited_for(slack, http):
    sl, _ = await adapter(slack, http, max_retry_wait=1)
    slack.rate_limit("chat.postMessage", retry_after="120")
    with pytest.raises(Exception, match="ratelimited"):
        await sl.deliver(inbound(), ScriptedAnswer(["x"]))
    assert slack.of("chat.postMessage") == []


async def test_ok_false_on_the_final_edit_posts_the_answer_instead(slack, http):
    sl, _ = await adapter(slack, http)
    slack.fail("chat.update", "cant_update_message")
    await sl.deliver(inbound(), ScriptedAnswer(["the answer"]))
    assert slack.texts("chat.postMessage") == ["…", "the answer"]


async def test_ok_false_on_the_placeholder_is_a_delivery_error(slack, http):
    sl, _ = await adapter(slack, http)
    slack.fail("chat.postMessage", "channel_not_found")
    with pytest.raises(DeliveryError, match="channel_not_found") as err:
        await sl.deliver(inbound(), ScriptedAnswer(["x"]))
    assert TOKEN not in str(err.value)
    assert slack.of("chat.update") == []


async def test_long_answers_continue_in_the_thread(slack, http):
    sl, _ = await adapter(slack, http, text_limit=40)
    text = "First paragraph, short enough.\n\nSecond paragraph is longer than forty chars. Third one."
    await sl.deliver(inbound("1700000201.000200"), ScriptedAnswer([text]))
    assert slack.texts("chat.update") == ["First paragraph, short enough."]
    follow = slack.of("chat.postMessage")[1:]
    assert [p["text"] for p in follow] == ["Second paragraph is longer than forty", "chars. Third one."]
    assert {p["thread_ts"] for p in follow} == {"1700000201.000200"}


async def test_answer_text_is_escaped_and_images_are_linked(slack, http):
    sl, _ = await adapter(slack, http)
    answer = ScriptedAnswer(["<!channel> 1 < 2 & done"], images=("https://img.example/a.png?x=1&y=2",))
    await sl.deliver(inbound(), answer)
    assert slack.texts("chat.update") == ["&lt;!channel&gt; 1 &lt; 2 &amp; done\nhttps://img.example/a.png?x=1&amp;y=2"]


async def test_an_empty_answer_says_so(slack, http):
    sl, _ = await adapter(slack, http)
    await sl.deliver(inbound(), ScriptedAnswer([]))
    assert slack.texts("chat.update") == ["(no answer)"]


# -- recovery after a crash ----------------------------------------------------------------


async def test_the_placeholder_is_noted_and_a_recovered_answer_edits_it(slack, http):
    sl, ctx = await adapter(slack, http)
    await sl.deliver(inbound(), ScriptedAnswer(["first try"]))
    assert ctx.notes == {"Ev1": {"placeholder": "1700000000.000001"}}
    recovered = dataclasses.replace(inbound(), recovered={"placeholder": "1700000000.000001"})
    await sl.deliver(recovered, ScriptedAnswer(["the whole answer"]))
    assert len(slack.of("chat.postMessage")) == 1  # no second "…"
    assert slack.of("chat.update")[-1] == {
        "channel": "D0DM00001",
        "ts": "1700000000.000001",
        "text": "the whole answer",
    }


async def test_the_reply_target_round_trips_as_json():
    sl, _ = await adapter()
    where = SlackThread("C1", "1700000000.000100")
    stored = orjson.loads(orjson.dumps(sl.dump_reply_to(where)))
    assert sl.load_reply_to(stored) == where and sl.resumable(inbound(), 0) is True


async def test_a_recovered_long_answer_posts_only_the_parts_not_posted_yet(slack, http):
    sl, ctx = await adapter(slack, http, text_limit=40)
    text = "First paragraph, short enough.\n\nSecond paragraph is longer than forty chars. Third one."
    await sl.deliver(inbound(), ScriptedAnswer([text]))
    assert ctx.notes["Ev1"] == {"placeholder": "1700000000.000001", "posted": 2}
    before = len(slack.of("chat.postMessage"))
    # as if the process died after posting the second part: the next one finishes the job
    recovered = dataclasses.replace(inbound(), recovered={"placeholder": "1700000000.000001", "posted": 2})
    await sl.deliver(recovered, ScriptedAnswer([text]))
    assert slack.texts("chat.postMessage")[before:] == ["chars. Third one."]
    assert slack.of("chat.update")[-1]["ts"] == "1700000000.000001"
