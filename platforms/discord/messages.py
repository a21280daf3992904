"""Discord's messages and interactions as the core's `Inbound`, or None when not ours to answer.

Ours are direct messages, and in servers the messages that mention the bot (in `mentions`, or
`<@id>` / `<@!id>` in the text: cut from it) or reply to one of its messages. Bots' messages,
our own included, are never answered (two bots would answer each other forever). A message
with no text but attachments or stickers is passed on with its `kind`, for the core's polite
answer. Only default (0) and reply (19) messages are read: joins, pins and the like are not
questions.
"""

from __future__ import annotations

import re
from typing import Any

from proxy.types import Inbound

MESSAGE_TYPES = {0, 19}  # default, reply


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def message(platform: str, d: dict[str, Any], me: str | None) -> Inbound | None:
    """A MESSAGE_CREATE's `d` as the core's message (replied to by `{channel, message}`)."""
    author = as_dict(d.get("author"))
    mid, channel, user = d.get("id"), d.get("channel_id"), author.get("id")
    if not (isinstance(mid, str) and isinstance(channel, str) and isinstance(user, str)):
        return None
    if author.get("bot") or user == me or d.get("type", 0) not in MESSAGE_TYPES:
        return None
    direct = not d.get("guild_id")
    content = str(d.get("content") or "")
    if not direct and not (me is not None and (_mentions(d, content, me) or _replies_to(d, me))):
        return None
    text = re.sub(rf"\s*<@!?{re.escape(me)}>\s*", " ", content).strip() if me else content.strip()
    name = author.get("global_name") or author.get("username")
    return Inbound(
        platform,
        f"m:{mid}",
        channel,
        user,
        text,
        kind="text" if text else _kind(d),
        direct=direct,
        user_name=str(name) if name else None,
        reply_to={"channel": channel, "message": mid},
    )


def _mentions(d: dict[str, Any], content: str, me: str) -> bool:
    listed = any(as_dict(m).get("id") == me for m in as_list(d.get("mentions")))
    return listed or f"<@{me}>" in content or f"<@!{me}>" in content


def _replies_to(d: dict[str, Any], me: str) -> bool:
    return as_dict(as_dict(d.get("referenced_message")).get("author")).get("id") == me


def _kind(d: dict[str, Any]) -> str:
    """What a message without text holds instead."""
    if d.get("sticker_items"):
        return "sticker"
    attachments = as_list(d.get("attachments"))
    if not attachments:
        return "text"  # empty: the core answers an empty question as it does everywhere
    ctype = str(as_dict(attachments[0]).get("content_type") or "")
    return "image" if ctype.startswith("image/") else "voice" if ctype.startswith("audio/") else "file"


def interaction(platform: str, data: dict[str, Any]) -> Inbound | None:
    """An `/ask` APPLICATION_COMMAND as the core's message (answered through the interaction's
    webhook: `{interaction: token, app}`), or None when it lacks what an answer needs."""
    command = as_dict(data.get("data"))
    member = as_dict(data.get("member"))
    user = as_dict(member.get("user") or data.get("user"))
    options = as_list(command.get("options"))
    question = next((o.get("value") for o in options if as_dict(o).get("name") == "question"), None)
    iid, token, app = data.get("id"), data.get("token"), data.get("application_id")
    channel = data.get("channel_id") or as_dict(data.get("channel")).get("id")
    if not all(isinstance(v, str) and v for v in (iid, token, app, user.get("id"), question)):
        return None
    return Inbound(
        platform,
        f"i:{iid}",
        str(channel or f"dm:{user['id']}"),
        str(user["id"]),
        str(question).strip(),
        direct=not data.get("guild_id"),
        user_name=user.get("global_name") or user.get("username"),
        reply_to={"interaction": token, "app": app},
    )
