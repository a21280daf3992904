"""Shared by the Slack tests: recorded payloads, signatures computed per Slack's docs, a tiny
fake PlatformContext and a scripted Answer."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson

from proxy.bus import Bus
from proxy.store.memory import MemoryStore
from proxy.types import Inbound, WebRequest

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TOKEN = "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy"
APP_TOKEN = "xapp-1-A0APP0001-1234567890-abcdefabcdef"
BOT_USER, BOT_ID = "U0BOT0001", "B0BOT0001"
PAYLOADS = Path(__file__).parent / "payloads"
FORM = "application/x-www-form-urlencoded"


def payload(name: str, *, event_id: str | None = None, **event: Any) -> dict[str, Any]:
    """A recorded payload; keyword arguments replace fields of its inner `event` (None drops one)."""
    data: dict[str, Any] = copy.deepcopy(orjson.loads((PAYLOADS / f"{name}.json").read_bytes()))
    if event_id is not None:
        data["event_id"] = event_id
    for key, value in event.items():
        if value is None:
            data["event"].pop(key, None)
        else:
            data["event"][key] = value
    return data


def raw(name: str, **kw: Any) -> bytes:
    return orjson.dumps(payload(name, **kw))


def shortcut_form(name: str, **fields: Any) -> bytes:
    """A recorded shortcut payload, form-encoded as Slack sends it; `ts` sets the message ts."""
    data = copy.deepcopy(orjson.loads((PAYLOADS / f"{name}.json").read_bytes()))
    if "ts" in fields:
        data["message"]["ts"] = data["message_ts"] = fields.pop("ts")
    if "channel" in fields:
        data["channel"]["id"] = fields.pop("channel")
    data.update(fields)
    return urlencode({"payload": orjson.dumps(data).decode()}).encode()


def sign(body: bytes, ts: int | None = None, secret: str = SECRET) -> dict[str, str]:
    """Slack's v0 signature, computed here from the docs: v0=hex(HMAC-SHA256(secret, v0:ts:body))."""
    ts = int(time.time()) if ts is None else ts
    mac = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": f"v0={mac}"}


def web_request(
    body: bytes, headers: dict[str, str] | None = None, content_type: str = "application/json", **query: str
) -> WebRequest:
    h = {
        "content-type": content_type,
        **{k.lower(): v for k, v in (sign(body) if headers is None else headers).items()},
    }
    return WebRequest("POST", "/hooks/slack", h, query, body)


class FakeJob:
    def __init__(self, msg: Inbound) -> None:
        self.msg, self.stopped = msg, 0

    def stop(self) -> None:
        self.stopped += 1

    def done(self) -> bool:
        return False

    async def wait(self) -> str:
        return ""


class FakeCtx:
    """Claims in a set, submissions in a list, spawned work kept so tests can await it."""

    def __init__(self, http: Any = None) -> None:
        self.http = http
        self.store: Any = None
        self.claimed: set[str] = set()
        self.notes: dict[str, dict[str, Any]] = {}
        self.submitted: list[Inbound] = []
        self.jobs: list[FakeJob] = []
        self.spawned: list[asyncio.Task[Any]] = []
        self.bus = Bus(MemoryStore())  # one instance: publishing does nothing

    async def claim(self, key: str) -> bool:
        first = key not in self.claimed
        self.claimed.add(key)
        return first

    async def note(self, msg: Inbound, **fields: Any) -> None:
        self.notes.setdefault(msg.event_id, {}).update(fields)

    def submit(self, platform: Any, msg: Inbound) -> FakeJob:
        self.submitted.append(msg)
        self.jobs.append(FakeJob(msg))
        return self.jobs[-1]

    async def accept(self, platform: Any, msg: Inbound) -> FakeJob | None:
        """As the core's: claim every key of `msg`, then submit it; None for a duplicate."""
        for key in (msg.event_id, *msg.extra_keys):
            if not await self.claim(key):
                return None
        return self.submit(platform, msg)

    def spawn(self, coro: Any, name: str) -> None:
        self.spawned.append(asyncio.ensure_future(coro))

    async def settle(self) -> None:
        await asyncio.gather(*self.spawned)


class ScriptedAnswer:
    """An Answer that yields `pieces`, `delay` seconds apart; `stop()` ends it early."""

    def __init__(self, pieces: list[str], delay: float = 0.0, images: tuple[str, ...] = (), failed: bool = False):
        self.pieces, self.delay = pieces, delay
        self.text, self.images, self.failed = "", images, failed
        self.stopped = self.replaced = False

    def stop(self) -> None:
        self.stopped = True

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        for i, piece in enumerate(self.pieces):
            if i and self.delay:
                await asyncio.sleep(self.delay)
            if self.stopped:
                return
            self.text += piece
            yield piece
