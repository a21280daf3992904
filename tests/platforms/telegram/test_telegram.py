"""Telegram through the real app: updates in by webhook (secret token) or long polling from a
fake Bot API, answers out as the messages and edits that fake recorded."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import yaml

from platforms.telegram.message import Me, parse_update, to_markdown_v2
from proxy.config import parse_config
from proxy.errors import ConfigError
from tests.platforms.telegram.fake_bot_api import BOT_ID, BOT_NAME, TOKEN, FakeBotAPI, mention, update
from tests.platforms.telegram.telegram_kit import SECRET, answered, config, hook, running


@pytest.fixture
async def api():
    async with FakeBotAPI() as fake:
        yield fake


async def test_webhook_secret_is_checked_and_a_duplicate_update_answered_once(tmp_path, api):
    async with running(tmp_path, api) as c:
        u = update("hello there")
        assert (await hook(c, u, secret="wrong")).status_code == 401
        assert (await hook(c, {"update_id": 1}, secret="")).status_code == 401
        assert (await hook(c, u)).status_code == 200
        assert (await hook(c, u)).status_code == 200  # Telegram's retry
        sentinel = update("sentinel")
        await hook(c, sentinel)
        assert sorted(await answered(api, 2, "echo: sentinel")) == ["echo: hello there", "echo: sentinel"]
    assert len(api.of("sendMessage")) == 2


async def test_a_private_answer_streams_into_one_edited_message(tmp_path, api):
    async with running(tmp_path, api, delay=0.05) as c:
        await hook(c, update("one two three four five six"))
        assert await answered(api, 1, "echo: one two three four five six") == ["echo: one two three four five six"]
    [first] = api.of("sendMessage")
    assert first["text"] == "…" and "reply_parameters" not in first  # no reply quote in a private chat
    edits = [e["text"] for e in api.of("editMessageText")]
    assert len(edits) >= 2 and edits[-1] == "echo: one two three four five six"
    assert any(e.endswith(" …") for e in edits[:-1])  # partial text shown while it streamed


async def test_groups_answer_mentions_replies_and_commands_only(tmp_path, api):
    async with running(tmp_path, api) as c:
        group = {"chat": -100, "kind": "supergroup"}
        await hook(c, update("just chatting", **group))
        await hook(c, update(f"@{BOT_NAME} what is up", entities=mention(), **group))
        bots_message = {
            "message_id": 1,
            "from": {"id": BOT_ID, "is_bot": True, "first_name": "Switch"},
            "chat": {"id": -100},
        }
        await hook(c, update("and then?", reply_to_message=bots_message, **group))
        await hook(c, update("/help@OtherBot", **group))
        await hook(c, update("/clear@SwitchBot", **group))
        await hook(c, update("from a bot", is_bot=True, user=999, **group))
        await hook(c, update("sentinel", entities=[], reply_to_message=bots_message, **group))
        said = await answered(api, 4, "echo: sentinel")
    assert sorted(said) == sorted(
        [
            "echo: what is up",
            "echo: and then?",
            "Done: I have forgotten our conversation. Let's start fresh.",
            "echo: sentinel",
        ]
    )  # answered concurrently: in any order
    quoted = [s.get("reply_parameters", {}).get("message_id") for s in api.of("sendMessage")]
    assert all(isinstance(q, int) for q in quoted)  # answers in groups reply to the question


async def test_a_wrong_or_missing_secret_is_refused_and_nothing_is_answered(tmp_path, api):
    async with running(tmp_path, api) as c:
        forged = update("forged")
        assert (await hook(c, forged, secret="s3cret-token_2")).status_code == 401
        refused = await c.post("/hooks/tg", json=update("no header"))
        assert refused.status_code == 401
        await hook(c, update("sentinel"))
        said = await answered(api, 1, "echo: sentinel")
    assert said == ["echo: sentinel"] and len(api.of("sendMessage")) == 1
    assert SECRET not in refused.text


async def test_start_help_and_clear_and_a_photo_gets_the_polite_answer(tmp_path, api):
    photo = [{"file_id": "f1", "width": 90, "height": 90}]
    async with running(tmp_path, api) as c:
        await hook(c, update("/start deep-link-payload"))
        await hook(c, update("/help"))
        await hook(c, update("/clear", chat=43, user=43))
        await hook(c, update(None, photo=photo, chat=44, user=44))
        await hook(c, update(None, photo=photo, caption="what is in this picture?", chat=45, user=45))
        said = await answered(api, 5)
    helps = [t for t in said if t.startswith("I'm an AI assistant connected through Switchboard (channel chat).")]
    assert len(helps) == 2 and all(t.endswith("\nIn groups, mention me or reply to one of my messages.") for t in helps)
    polite = "Sorry, I can only read text messages for now. Please send your question as text."
    rest = sorted(t for t in said if t not in helps)
    assert rest == ["Done: I have forgotten our conversation. Let's start fresh.", polite, polite]


async def test_a_long_answer_continues_in_further_messages(tmp_path, api):
    words = " ".join(f"word{i:04d}" for i in range(600))  # ~5,400 characters
    async with running(tmp_path, api) as c:
        await hook(c, update(words))
        said = await answered(api, 2)
    assert all(len(s) <= 4096 for s in said)
    assert " ".join(s.strip() for s in said) == f"echo: {words}"


async def test_a_429_is_waited_out_and_the_final_text_still_lands(tmp_path, api):
    api.fail("editMessageText", status=429, retry_after=1)
    async with running(tmp_path, api) as c:
        await hook(c, update("patience please"))
        said = await answered(api, 1, "echo: patience please")
    assert said == ["echo: patience please"]
    assert api.of("editMessageText")[0]["text"] in ("echo: patience please", "echo: patience please …")


async def test_markdown_v2_renders_code_and_bold_and_escapes_the_rest():
    assert to_markdown_v2("Use **x_1** (not y).") == r"Use *x\_1* \(not y\)\."
    assert (
        to_markdown_v2("run `a*b` then\n```py\nprint('\\`')\n```!") == "run `a*b` then\n```\nprint('\\\\\\`')\n```\\!"
    )


def test_mentions_are_cut_by_utf16_offsets_and_other_bots_commands_skipped():
    me = Me(BOT_ID, BOT_NAME)
    text = f"🙂 @{BOT_NAME} hi"  # the emoji is two UTF-16 units
    msg = parse_update(
        "tg", update(text, kind="group", chat=-1, entities=[{"type": "mention", "offset": 3, "length": 10}]), me
    )
    assert msg is not None and msg.text == "🙂 hi" and not msg.direct
    assert parse_update("tg", update("/help@OtherBot", kind="group", chat=-1), me) is None
    assert parse_update("tg", update("hi", user=BOT_ID), me) is None  # our own
    assert parse_update("tg", {"update_id": 9, "edited_message": {"text": "x"}}, me) is None
    bare = parse_update("tg", update(f"@{BOT_NAME}", kind="group", chat=-1, entities=mention()), me)
    assert bare is not None and (bare.text, bare.kind) == ("", "text")  # the core answers /help
    joined = update(None, kind="group", chat=-1, new_chat_members=[{"id": 5, "is_bot": False}])
    assert parse_update("tg", joined, me) is None  # a service message


async def test_webhook_url_is_registered_at_start_with_the_secret(tmp_path, api):
    async with running(tmp_path, api, webhook_url="https://bot.example.com/hooks/tg"):
        await api.wait(lambda: api.webhook is not None)
    assert api.of("setWebhook") == [
        {"url": "https://bot.example.com/hooks/tg", "secret_token": SECRET, "allowed_updates": ["message"]}
    ]


def test_webhook_mode_needs_a_secret_token(tmp_path):
    cfg = config(tmp_path, FakeBotAPI(), secret_token=None)
    cfg["platforms"]["tg"]["api_base"] = "http://127.0.0.1:9"
    with pytest.raises(ConfigError, match="secret_token"):
        parse_config(cfg, {})


async def test_switchboard_setup_sets_the_webhook(tmp_path, api):
    cfg = config(tmp_path, api, webhook_url="https://bot.example.com/hooks/tg")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cli = Path(sys.executable).parent / "switchboard"
    proc = await asyncio.create_subprocess_exec(
        str(cli), "setup", "--config", str(path), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out
    assert "tg" in out.decode() and "webhook set" in out.decode()
    assert TOKEN not in out.decode()
    assert api.webhook == "https://bot.example.com/hooks/tg"


async def test_switchboard_setup_in_polling_mode_removes_the_webhook_and_a_bad_token_fails_quietly(tmp_path, api):
    import io

    from proxy.cli import _setup

    api.webhook = "https://old.example.com/hook"
    out = io.StringIO()
    cfg = config(tmp_path, api, mode="polling", secret_token=None)
    assert await _setup(parse_config(cfg, {}), out) == 0
    assert api.webhook is None and "webhook removed (polling mode)" in out.getvalue()
    cfg["platforms"]["tg"]["bot_token"] = "999:WRONG-token"
    out = io.StringIO()
    assert await _setup(parse_config(cfg, {}), out) == 1
    assert "FAILED" in out.getvalue() and "Unauthorized" in out.getvalue()
    assert "WRONG-token" not in out.getvalue() and api.base_url not in out.getvalue()
