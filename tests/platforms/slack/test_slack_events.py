"""Recorded Slack payloads → Inbound messages, ignores and shortcuts (pure parsing)."""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest

from platforms.slack.events import SlackThread, escape, parse_event, parse_shortcut, plain_text
from proxy.errors import RequestError
from tests.platforms.slack.slack_kit import BOT_USER, payload, shortcut_form


def test_direct_message():
    msg = parse_event("slack", payload("message_im"), BOT_USER)
    assert msg is not None
    assert (msg.event_id, msg.chat_id, msg.user_id, msg.direct, msg.kind) == (
        "Ev0IM000001",
        "D0DM00001",
        "U0USER001",
        True,
        "text",
    )
    assert msg.text == (
        "What is the difference between a list & a tuple? See https://docs.python.org/3/tutorial/datastructures.html"
    )
    assert msg.thread_id == "1700000101.000100"
    assert msg.reply_to == SlackThread("D0DM00001", "1700000101.000100")
    assert msg.extra_keys == ("msg:D0DM00001:1700000101.000100",)


def test_mention_in_a_channel_loses_our_mention_only():
    msg = parse_event("slack", payload("app_mention_channel"), BOT_USER)
    assert msg is not None and not msg.direct
    assert msg.text == "can you summarise what @U0USER002 said in #eng about 2 < 3?"
    assert (msg.chat_id, msg.thread_id) == ("C0ENG0001", "1700000201.000200")
    assert msg.reply_to == SlackThread("C0ENG0001", "1700000201.000200")


def test_mention_in_a_thread_answers_in_that_thread():
    msg = parse_event("slack", payload("app_mention_thread"), BOT_USER)
    assert msg is not None
    assert msg.text == "and what about sets, ?"
    assert msg.thread_id == "1700000201.000200"  # the thread root, not the message's own ts
    assert msg.reply_to == SlackThread("C0ENG0001", "1700000201.000200")
    assert msg.extra_keys == ("msg:C0ENG0001:1700000305.000500",)


def test_bot_user_from_the_envelope_when_auth_test_failed():
    msg = parse_event("slack", payload("app_mention_channel"), None)
    assert msg is not None and msg.text.startswith("can you summarise")
    assert parse_event("slack", payload("message_im", user=BOT_USER, bot_id=None), None) is None


@pytest.mark.parametrize(
    "name,changes",
    [
        ("bot_message", {}),
        ("own_message", {}),
        ("own_message", {"bot_id": None, "bot_profile": None}),  # our user id alone is enough
        ("message_changed", {}),
        ("channel_join", {}),
        ("message_im", {"subtype": "message_deleted"}),
        ("message_im", {"bot_id": "B0OTHER01"}),
        ("message_channels", {}),  # a channel message: we answer its app_mention instead
        ("message_im", {"user": None}),
        ("message_im", {"type": "reaction_added"}),
    ],
)
def test_ignored(name, changes):
    assert parse_event("slack", payload(name, **changes), BOT_USER) is None


def test_app_rate_limited_and_url_verification_hold_no_message():
    assert parse_event("slack", payload("app_rate_limited"), BOT_USER) is None
    assert parse_event("slack", payload("url_verification"), BOT_USER) is None


def test_files():
    image = parse_event("slack", payload("file_share_image"), BOT_USER)
    assert image is not None and (image.kind, image.text) == ("image", "")
    pdf = parse_event("slack", payload("file_share_pdf_with_text"), BOT_USER)
    assert pdf is not None and (pdf.kind, pdf.text) == ("text", "what does section 2 say?")
    bare = parse_event("slack", payload("file_share_pdf_with_text", text=""), BOT_USER)
    assert bare is not None and bare.kind == "file"
    clip = payload("file_share_image")
    clip["event"]["files"][0]["mimetype"] = "audio/webm"
    voice = parse_event("slack", clip, BOT_USER)
    assert voice is not None and voice.kind == "voice"


@pytest.mark.parametrize(
    "mrkdwn,plain",
    [
        ("<@U0BOT0001> hi", "hi"),
        ("<@U0BOT0001|switchboard> hi", "hi"),
        ("hi <@U0USER002|ann>", "hi @ann"),
        ("tell <!here> and <!subteam^S0TEAM|@devs>", "tell @here and @devs"),
        (
            "<mailto:ann@example.com|ann@example.com> &amp; <https://example.com?a=1&amp;b=2|example>",
            "ann@example.com & https://example.com?a=1&b=2",
        ),
        ("a &lt;b&gt; &amp;lt;", "a <b> &lt;"),
        ("due <!date^1700000000^{date_short}|Nov 14, 2023>", "due Nov 14, 2023"),
    ],
)
def test_plain_text(mrkdwn, plain):
    assert plain_text(mrkdwn, BOT_USER) == plain


def test_escape_defuses_pings_and_is_undone_by_plain_text():
    assert escape("<!channel> 1 < 2 & 3 > 2") == "&lt;!channel&gt; 1 &lt; 2 &amp; 3 &gt; 2"
    assert plain_text(escape("a <b> & c"), None) == "a <b> & c"


def test_shortcuts():
    stop = parse_shortcut(parse_qs(shortcut_form("shortcut_stop").decode())["payload"][0])
    assert stop is not None
    assert (stop.callback_id, stop.channel, stop.ts, stop.user) == (
        "stop_generating",
        "D0DM00001",
        "1700000102.000200",
        "U0USER001",
    )
    assert (stop.author, stop.author_bot) == (BOT_USER, "B0BOT0001")
    other = parse_shortcut(parse_qs(shortcut_form("shortcut_delete_other").decode())["payload"][0])
    assert other is not None and (other.callback_id, other.author, other.author_bot) == (
        "delete_message",
        "U0USER002",
        None,
    )


@pytest.mark.parametrize("body", ["not json", "[1]", '{"type": "message_action", "channel": "C1"}'])
def test_malformed_shortcuts(body):
    with pytest.raises(RequestError):
        parse_shortcut(body)


def test_other_interactions_are_not_shortcuts():
    assert parse_shortcut('{"type": "block_actions", "actions": []}') is None
    assert parse_shortcut('{"type": "shortcut", "callback_id": "stop_generating"}') is None
