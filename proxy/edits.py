"""Streaming an answer into a chat message by editing it: the loop Slack, Telegram and Discord
share. Each platform says how to edit, how often, how long a message may be, and which of its
errors are rate limits (with the seconds to wait)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from proxy.contracts import Answer
from proxy.text import split_text

log = logging.getLogger("switchboard.edits")
CURSOR = " …"


async def stream_edits(
    answer: Answer,
    edit: Callable[[str], Awaitable[object]],
    *,
    interval: float,
    limit: int,
    errors: tuple[type[Exception], ...],
    retry_after: Callable[[Exception], float | None],
) -> float:
    """Show `answer` while it streams: `edit(text so far + " …")` at most once per `interval`,
    only when the text changed, the first `limit` characters (later parts are the caller's to
    send once the answer is complete). A platform error (`errors`) never ends the answer: a rate
    limit postpones the next edit by its `retry_after`, anything else is logged. Returns the
    monotonic time before which the platform asked for no more edits, for the final edit."""
    shown, next_edit, not_before = "", time.monotonic() + interval, 0.0
    async for _ in answer:
        if time.monotonic() < next_edit:
            continue
        head = split_text(answer.text, limit - len(CURSOR))[:1]
        if not head or head[0] == shown:
            continue
        try:
            await edit(head[0] + CURSOR)
            shown = head[0]
        except errors as e:
            wait = retry_after(e)
            if wait:
                not_before = time.monotonic() + wait
            else:
                log.warning("streaming edit failed: %s", e)
        next_edit = max(not_before, time.monotonic() + interval)
    return not_before
