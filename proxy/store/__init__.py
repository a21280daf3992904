"""Store implementations (see `proxy.contracts.Store`): memory://, sqlite:///path, redis://host/db.

Shared here: message (de)serialization and turn slicing, so every store answers alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from proxy.types import Message

#: Messages kept per conversation; older ones are dropped.
TRANSCRIPT_CAP = 2000


def dump_message(m: Message) -> bytes:
    return orjson.dumps({"r": m.role, "c": m.content, "x": m.extra})


def load_message(raw: bytes | str) -> Message:
    d: dict[str, Any] = orjson.loads(raw)
    return Message(d["r"], d.get("c"), d.get("x"))


def last_turns(messages: list[Message], turns: int) -> list[Message]:
    """The last `turns` exchanges: each starts at a user message and runs to the next one."""
    if turns <= 0:
        return []
    starts = [i for i, m in enumerate(messages) if m.role == "user"]
    if not starts:
        return []
    return messages[starts[-turns] if len(starts) >= turns else starts[0] :]


async def tail_turns(read_tail: Callable[[int], Awaitable[list[Message]]], turns: int) -> list[Message]:
    """`last_turns` over a stored transcript, reading only its tail.

    `read_tail(n)` returns the newest `n` messages, oldest first. The window grows until it holds
    `turns` user messages or the whole transcript, so long tool exchanges are never cut short.
    """
    if turns <= 0:
        return []
    limit = max(8, turns * 4)
    while True:
        tail = await read_tail(limit)
        if len(tail) < limit or sum(m.role == "user" for m in tail) >= turns:
            return last_turns(tail, turns)
        limit *= 4


def window_end(now: float, window: float) -> float:
    """When the fixed counting window holding `now` ends. Windows are aligned to the Unix epoch,
    so every store and the limiter's local counts agree on them (Redis does the same in Lua)."""
    return (now // window + 1) * window
