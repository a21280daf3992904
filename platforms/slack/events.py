"""Slack payloads → what the adapter acts on: user messages (`message.im`, `app_mention`) and
message shortcuts. Pure functions; no I/O.

Slack quirks handled here (reference: shared/reference/platforms.md §1):
- our own posts and edits come back as events (a reply loop waits there): anything with a
  `bot_id`/`bot_profile`, from our bot user, or with a subtype we do not handle is dropped;
- `app_mention` text holds the `<@UBOT>` token; message text is Slack "mrkdwn" with `&`, `<`, `>`
  escaped as entities and links/mentions wrapped in `<…|label>`; the model gets plain text;
- answers go into the thread: `thread_ts = event.thread_ts or event.ts`;
- shortcuts arrive form-encoded as a single `payload=<json>` field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson

from proxy.errors import RequestError
from proxy.types import Inbound

#: Message subtypes that are a person writing to us; every other one (message_changed,
#: message_deleted, bot_message, channel_join, ...) is ignored.
USER_SUBTYPES = frozenset({None, "file_share", "thread_broadcast", "me_message"})
SPECIAL = re.compile(r"<([^<>|]*)(?:\|([^<>]*))?>")
FILE_KINDS = (("image/", "image"), ("audio/", "voice"), ("video/", "video"))


@dataclass(frozen=True, slots=True)
class SlackThread:
    """Where an answer goes: `Inbound.reply_to` of Slack messages."""

    channel: str
    thread_ts: str


@dataclass(frozen=True, slots=True)
class Shortcut:
    """A message shortcut on `ts` in `channel`; `author`/`author_bot` say who posted it."""

    callback_id: str
    channel: str
    ts: str
    user: str | None
    author: str | None
    author_bot: str | None


def escape(text: str) -> str:
    """Outgoing text: only `&`, `<` and `>` are escaped, so an answer cannot ping `<!channel>`."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plain_text(mrkdwn: str, bot_user: str | None) -> str:
    """Slack message text as a person would read it, without the mention of our bot."""

    def readable(m: re.Match[str]) -> str:
        target, label = m.group(1), m.group(2)
        if target.startswith("@") and (target[1:] == bot_user or (bot_user is None and m.start() == 0)):
            return ""
        if target.startswith("!date"):
            return label or ""
        if target[:1] in ("@", "!"):  # a user, @here/@channel, a user group (<!subteam^S1|@team>)
            name = label or target[1:].split("^")[0]
            return name if name.startswith("@") else "@" + name
        if target.startswith("#"):
            return "#" + (label or target[1:])
        if target.startswith("mailto:"):
            return label or target[7:]
        return target  # a link: the URL itself

    text = SPECIAL.sub(readable, mrkdwn)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").strip()


def own_user(data: dict[str, Any]) -> str | None:
    """Our bot's user id as the envelope says it (`authorizations[0]` when `is_bot`)."""
    auths = data.get("authorizations")
    first = auths[0] if isinstance(auths, list) and auths and isinstance(auths[0], dict) else {}
    user = first.get("user_id")
    return user if first.get("is_bot") and isinstance(user, str) else None


def parse_event(platform: str, data: dict[str, Any], bot_user: str | None) -> Inbound | None:
    """The user message in an `event_callback` envelope, or None when it must be ignored."""
    ev = data.get("event")
    event_id = data.get("event_id")
    if not isinstance(ev, dict) or not isinstance(event_id, str) or not event_id:
        return None
    direct = ev.get("channel_type") == "im"
    if not (ev.get("type") == "app_mention" or (ev.get("type") == "message" and direct)):
        return None
    if ev.get("subtype") not in USER_SUBTYPES or ev.get("bot_id") or ev.get("bot_profile"):
        return None
    user, channel, ts = ev.get("user"), ev.get("channel"), ev.get("ts")
    if not (isinstance(user, str) and isinstance(channel, str) and isinstance(ts, str)) or not user:
        return None
    if user in (bot_user, own_user(data)):
        return None
    raw = ev.get("text")
    text = plain_text(raw if isinstance(raw, str) else "", bot_user or own_user(data))
    files = ev.get("files") if isinstance(ev.get("files"), list) else []
    thread_ts = ev.get("thread_ts")
    thread = thread_ts if isinstance(thread_ts, str) and thread_ts else ts
    return Inbound(
        platform,
        event_id,
        channel,
        user,
        text,
        kind="text" if text or not files else _file_kind(files),
        direct=direct,
        thread_id=thread,
        reply_to=SlackThread(channel, thread),
        extra_keys=(f"msg:{channel}:{ts}",),
    )


def _file_kind(files: list[Any]) -> str:
    first = files[0] if isinstance(files[0], dict) else {}
    mimetype = str(first.get("mimetype") or "")
    return next((kind for prefix, kind in FILE_KINDS if mimetype.startswith(prefix)), "file")


def form_fields(body: bytes) -> dict[str, str]:
    try:
        return {k: v[0] for k, v in parse_qs(body.decode("utf-8"), keep_blank_values=True).items()}
    except (UnicodeDecodeError, ValueError):
        raise RequestError("form body is not valid UTF-8 form data") from None


def parse_shortcut(payload_json: str) -> Shortcut | None:
    """A message shortcut (`type: message_action`), or None for other interactions."""
    try:
        payload = orjson.loads(payload_json)
    except orjson.JSONDecodeError:
        raise RequestError("interactivity payload is not JSON") from None
    if not isinstance(payload, dict):
        raise RequestError("interactivity payload is not a JSON object")
    if payload.get("type") != "message_action":
        return None
    channel, message, user = _obj(payload, "channel"), _obj(payload, "message"), _obj(payload, "user")
    callback, channel_id, ts = payload.get("callback_id"), channel.get("id"), message.get("ts")
    if not (isinstance(callback, str) and isinstance(channel_id, str) and isinstance(ts, str)):
        raise RequestError("message shortcut without callback_id, channel or message ts")
    author, author_bot = _str(message.get("user")), _str(message.get("bot_id"))
    return Shortcut(callback, channel_id, ts, _str(user.get("id")), author, author_bot)


def _obj(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
