"""Telegram updates as the core's messages, and answers as Telegram text.

Which messages are ours: every message in a private chat; in groups only those addressed to
the bot — an `@botname` mention (or a `text_mention` of the bot), a reply to one of its
messages, or a command (`/help`, `/help@botname`; a command suffixed with another bot's name is
that bot's). The mention is cut out of the text (entity offsets count UTF-16 code units).
`/start` (with or without a deep-link payload) is `/help`. Bots' messages (our own included) are
never answered: no loops. Edited messages and channel posts are not answered either: an edit
would answer the same question twice, and a channel has no one to answer.

A photo, voice note, sticker or file gets the polite "text only" answer, also when it has a
caption: the model would only see the caption and answer about a picture it never saw.

Forum topics: `message_thread_id` is the topic only when `is_topic_message` is set. Telegram
also puts it on replies in supergroups without topics, and answering with it there fails with
400 "message thread not found".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from proxy.types import Inbound

#: Message fields that carry something other than text, and the core's name for it.
KINDS = (
    ("photo", "image"),
    ("sticker", "sticker"),
    ("voice", "voice"),
    ("audio", "voice"),
    ("video", "video"),
    ("video_note", "video"),
    ("animation", "video"),
    ("document", "file"),
    ("location", "location"),
    ("venue", "location"),
    ("contact", "file"),
    ("poll", "event"),
)


@dataclass(frozen=True, slots=True)
class Me:
    """The bot, from getMe."""

    id: int | None = None
    username: str | None = None


def parse_update(platform: str, update: dict[str, Any], me: Me) -> Inbound | None:
    """The user message in an Update, or None when it is not ours to answer."""
    update_id, m = update.get("update_id"), update.get("message")
    if not isinstance(update_id, int) or not isinstance(m, dict):
        return None  # edited messages, channel posts, callback queries...: not answered
    chat, sender = m.get("chat"), m.get("from")
    if not isinstance(chat, dict) or not isinstance(sender, dict) or not isinstance(chat.get("id"), int):
        return None
    if sender.get("is_bot") or sender.get("id") == me.id:
        return None
    direct = chat.get("type") == "private"
    raw = m.get("text") if isinstance(m.get("text"), str) else m.get("caption")
    text = raw if isinstance(raw, str) else ""
    entities = m.get("entities") or m.get("caption_entities") or []
    mentioned, text = _strip_mentions(text, entities, me)
    text, command_for_us = _command(text.strip(), me)
    if command_for_us is False:
        return None  # another bot's command
    replied = m.get("reply_to_message")
    to_us = isinstance(replied, dict) and isinstance(replied.get("from"), dict) and replied["from"].get("id") == me.id
    if not direct and not (mentioned or to_us or command_for_us):
        return None
    kind = next((k for field, k in KINDS if field in m), "text")
    if kind == "text" and not text and not isinstance(m.get("text"), str):
        return None  # a service message (members joined, a title changed...)
    thread = m.get("message_thread_id") if m.get("is_topic_message") is True else None
    name = sender.get("username") or " ".join(str(sender.get(k) or "") for k in ("first_name", "last_name")).strip()
    return Inbound(
        platform,
        f"u:{update_id}",
        str(chat["id"]),
        str(sender.get("id")),
        text,
        kind=kind,
        direct=direct,
        thread_id=str(thread) if isinstance(thread, int) else None,
        user_name=name or None,
        reply_to={"chat": chat["id"], "message": m.get("message_id"), "thread": thread, "group": not direct},
        extra_keys=(f"m:{chat['id']}:{m.get('message_id')}",),
    )


def _strip_mentions(text: str, entities: Any, me: Me) -> tuple[bool, str]:
    """(was the bot mentioned, the text without those mentions). Offsets are UTF-16 units."""
    if not isinstance(entities, list) or not text:
        return False, text
    units = text.encode("utf-16-le")
    cuts = []
    for e in entities:
        if not isinstance(e, dict) or not isinstance(e.get("offset"), int) or not isinstance(e.get("length"), int):
            continue
        start, end = 2 * e["offset"], 2 * (e["offset"] + e["length"])
        piece = units[start:end].decode("utf-16-le", "replace")
        user = e.get("user")
        user = user if isinstance(user, dict) else {}
        ours = (e.get("type") == "mention" and me.username and piece.lower() == f"@{me.username.lower()}") or (
            e.get("type") == "text_mention" and me.id is not None and user.get("id") == me.id
        )
        if ours:
            cuts.append((start, end))
    for start, end in sorted(cuts, reverse=True):
        units = units[:start] + units[end:]
    return bool(cuts), re.sub(r"\s{2,}", " ", units.decode("utf-16-le", "replace")).strip()


def _command(text: str, me: Me) -> tuple[str, bool | None]:
    """(text with `/cmd@ourbot` as `/cmd` and `/start` as `/help`, True for a command for us /
    False for another bot's / None for no command)."""
    if not text.startswith("/"):
        return text, None
    word, _, rest = text.partition(" ")
    command, _, bot = word.partition("@")
    if bot and (me.username is None or bot.lower() != me.username.lower()):
        return text, False
    if command.lower() == "/start":
        return "/help", True  # a deep link's payload (`/start <payload>`) means nothing to us
    return (f"{command} {rest}".strip()), True


_SPECIAL = re.compile(r"([_*\[\]()~`>#+\-=|{}.!\\])")
_CODE_SPECIAL = re.compile(r"([`\\])")
_TOKENS = re.compile(r"```(?:[^\n`]*\n)?(.*?)```|`([^`\n]+)`|\*\*(.+?)\*\*", re.S)


def escape(text: str) -> str:
    """Text shown literally under MarkdownV2 (every special character escaped)."""
    return _SPECIAL.sub(r"\\\1", text)


def to_markdown_v2(text: str) -> str:
    """A model's Markdown as Telegram MarkdownV2: fenced and inline code and **bold** kept,
    everything else escaped, so an answer can never break Telegram's parser."""
    out, at = [], 0
    for m in _TOKENS.finditer(text):
        out.append(escape(text[at : m.start()]))
        block, inline, bold = m.group(1), m.group(2), m.group(3)
        if block is not None:
            out.append("```\n" + _CODE_SPECIAL.sub(r"\\\1", block) + "```")
        elif inline is not None:
            out.append("`" + _CODE_SPECIAL.sub(r"\\\1", inline) + "`")
        else:
            out.append("*" + escape(bold) + "*")
        at = m.end()
    out.append(escape(text[at:]))
    return "".join(out)
