"""`thread_context: slack`: a thread's earlier messages, read from Slack, as the model's history.

Everyone's messages count, not only the bot's own exchange with the asker: the bot's messages
are `assistant` turns, everyone else's (people and other bots) `user` turns prefixed with the
author's name (`Dana: …`), so the model can tell who said what. Names come from `users.info`
(cached per user for an hour; the user id when Slack will not say). The thread is read with
`conversations.replies` (oldest first, paged by cursor, at most `MAX_PAGES` pages, and no page
after the one holding the message being answered); only the newest `2 × history` messages before
it are kept. A thread too long to read up to that message within `MAX_PAGES` falls back to the
stored transcript, as does any API error: its oldest messages alone would be the wrong context.

Slack's read limits: `conversations.replies` is Tier 3 (50+/min) for internal and Marketplace
apps, but commercially distributed apps outside the Marketplace get 1 request/minute with at most
15 messages a page; such an app mostly gets 429 here and answers from the transcript (a 429 is
not waited out: the user is waiting).
"""

from __future__ import annotations

import logging
from typing import Any

from cachetools import TTLCache

from platforms.slack.api import SlackAPI, SlackAPIError, SlackRateLimited
from platforms.slack.events import plain_text
from proxy.types import Message

log = logging.getLogger("switchboard.slack")
PAGE = 200
MAX_PAGES = 5


class ThreadReader:
    def __init__(self, api: SlackAPI) -> None:
        self.api = api
        self.names: TTLCache[str, str] = TTLCache(maxsize=10_000, ttl=3600)

    async def earlier(
        self, channel: str, thread_ts: str, before: str, keep: int, bot_user: str | None, bot_id: str | None
    ) -> list[Message] | None:
        """The thread's messages before `before` (a ts), as turns; None when Slack cannot say."""
        try:
            cut = _ts(before)
            raw = await self._replies(channel, thread_ts, cut)
            turns = []
            for m in raw:
                ts = str(m.get("ts") or "")
                if not ts or _ts(ts) >= cut:
                    continue
                turns.append(await self._turn(m, bot_user, bot_id))
        except (SlackAPIError, ValueError) as e:
            log.warning("slack thread %s not read (%s); the stored transcript is used", thread_ts, e)
            return None
        kept = [t for t in turns if t is not None]
        return kept[-keep:] if keep else []

    async def _replies(self, channel: str, thread_ts: str, cut: tuple[int, int]) -> list[dict[str, Any]]:
        """The thread's messages, oldest first, up to the page holding `cut` (or the end)."""
        out: list[dict[str, Any]] = []
        cursor = ""
        for _ in range(MAX_PAGES):
            params = {"channel": channel, "ts": thread_ts, "limit": str(PAGE)}
            if cursor:
                params["cursor"] = cursor
            data = await self.api.read("conversations.replies", params)
            page = [m for m in data.get("messages") or [] if isinstance(m, dict)]
            out += page
            cursor = str((data.get("response_metadata") or {}).get("next_cursor") or "")
            if not data.get("has_more") or not cursor or any(_ts(str(m.get("ts") or "0")) >= cut for m in page):
                return out
        raise ValueError(f"longer than {MAX_PAGES} pages before the message")

    async def _turn(self, m: dict[str, Any], bot_user: str | None, bot_id: str | None) -> Message | None:
        text = plain_text(str(m.get("text") or ""), bot_user).strip()
        if not text:
            return None
        if (bot_user and m.get("user") == bot_user) or (bot_id and m.get("bot_id") == bot_id):
            return Message("assistant", text.removesuffix(" …"))
        if m.get("bot_id"):  # another bot: named as Slack shows it
            profile = m.get("bot_profile")
            profile = profile if isinstance(profile, dict) else {}
            name = str(profile.get("name") or m.get("username") or m["bot_id"])
        else:
            name = await self._name(str(m.get("user") or "someone"))
        return Message("user", f"{name}: {text}")

    async def _name(self, user: str) -> str:
        """The user's display name (else real name, else handle), from `users.info`, cached."""
        name = self.names.get(user)
        if name is None:
            try:
                info = (await self.api.read("users.info", {"user": user})).get("user") or {}
                profile = info.get("profile") or {}
                name = str(profile.get("display_name") or profile.get("real_name") or info.get("name") or user)
            except SlackAPIError as e:
                log.info("slack users.info %s: %s; named by id", user, e)
                if isinstance(e, SlackRateLimited):
                    return user  # not remembered: the next read asks again
                name = user
            self.names[user] = name
        return name


def _ts(ts: str) -> tuple[int, int]:
    """A Slack ts (`"1700000305.000500"`) as exact (seconds, micros): floats blur the last digits."""
    seconds, _, micros = ts.partition(".")
    return int(seconds), int(micros.ljust(6, "0")[:6] or 0)
