"""Which channel answers a chat-platform message, and which conversation it belongs to."""

from __future__ import annotations

from collections.abc import Iterable

from proxy.config import Channel, MatchConfig
from proxy.text import strip_prefix
from proxy.types import Inbound


def _one_of(rule: str | list[str] | None, value: str | None) -> bool:
    if rule is None:
        return True
    if value is None:
        return False
    return value == rule if isinstance(rule, str) else value in rule


def match(m: MatchConfig, msg: Inbound) -> str | None:
    """The message text for this channel if `m` matches (prefix stripped), else None."""
    if not (_one_of(m.platform, msg.platform) and _one_of(m.chat, msg.chat_id) and _one_of(m.user, msg.user_id)):
        return None
    if m.direct is not None and m.direct != msg.direct:
        return None
    if m.prefix is None:
        return msg.text
    return strip_prefix(msg.text, [m.prefix] if isinstance(m.prefix, str) else m.prefix)


def route(channels: Iterable[Channel], msg: Inbound) -> tuple[Channel, str] | None:
    """First matching channel wins. A channel without `match.platform` takes any platform."""
    for ch in channels:
        text = match(ch.config.match, msg)
        if text is not None:
            return ch, text
    return None


def conversation(channel: str, door: str, *session: str) -> str:
    """The store key of one conversation, `channel|door|session…` — the one place it is spelled.
    `door` is the platform instance's name, `openai` or `cli`; the session parts say whose it is
    behind that door."""
    return "|".join((channel, door, *session))


def conversation_key(channel: Channel, msg: Inbound) -> str:
    """Store key of a chat-platform conversation: per user in direct chats; per the channel's
    `session` policy (user / chat / thread) in groups."""
    policy = "user" if msg.direct else channel.config.session
    if policy == "chat":
        session = msg.chat_id
    elif policy == "thread":
        session = f"{msg.chat_id}/{msg.thread_id or 'main'}"
    else:
        session = f"{msg.chat_id}/{msg.user_id}"
    return conversation(channel.name, msg.platform, session)
