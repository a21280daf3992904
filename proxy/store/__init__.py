"""Store implementations (see `proxy.contracts.Store`): memory://, sqlite:///path, redis://host/db.

Shared here: message (de)serialization and turn slicing, so every store answers alike.
"""

from __future__ import annotations

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
