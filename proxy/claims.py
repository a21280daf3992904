"""Leased claims of platform messages: "exactly once" means one answer, not at most one.

A platform message is claimed by this process (`owner`, one id per process) for `claim_lease`
seconds (`Store.claim_lease`). Once submitted, the message itself is stored on the claim (the
payload: the `Inbound` with its `reply_to`, the adapter's delivery notes, and the finished
answer once generation ended), and the lease is renewed every third of its length until the
delivery ends; then the claim is settled. If the process dies first, the claim runs out
unsettled and the next process that claims the key (a platform retry, or the recovery sweep in
`proxy/recovery.py`) takes it over with the payload and finishes the job:

- an answer already generated (and recorded in the transcript) is delivered as it was stored,
  never generated again, so the transcript holds the exchange once;
- the adapter sees the notes of the dead attempt in `msg.recovered` (Slack edits the
  placeholder it had posted instead of posting a second one).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from cachetools import TTLCache

from proxy.config import ServerConfig
from proxy.contracts import Claim, ClaimState, Platform, Store
from proxy.types import JSON, Inbound

log = logging.getLogger("switchboard.claims")

#: Every platform message claim lives under this prefix: `seen:<platform name>:<key>`.
PREFIX = "seen:"
_FIELDS = ("platform", "event_id", "chat_id", "user_id", "text", "kind", "direct", "thread_id", "user_name")
_OPTIONAL = ("channel",)  # fields newer than some stored claims


def claim_key(platform: str, key: str) -> str:
    return f"{PREFIX}{platform}:{key}"


@dataclass(slots=True)
class Record:
    """What is stored on the claim of a message being answered."""

    msg: Inbound
    claimed_at: float
    notes: JSON = field(default_factory=dict)
    answer: str | None = None  # the finished answer, once generated (and recorded)
    images: tuple[str, ...] = ()
    attempts: int = 0  # processes that started answering it (a message that crashes every one stops)

    def dump(self, platform: Platform) -> str:
        m = self.msg
        inbound = {name: getattr(m, name) for name in (*_FIELDS, *_OPTIONAL)}
        inbound["reply_to"] = platform.dump_reply_to(m.reply_to)
        inbound["extra_keys"] = list(m.extra_keys)
        body = {"inbound": inbound, "at": self.claimed_at, "notes": self.notes, "attempts": self.attempts}
        if self.answer is not None:
            body |= {"answer": self.answer, "images": list(self.images)}
        return orjson.dumps(body).decode()


def load_record(platforms: Mapping[str, Platform], raw: str) -> tuple[Platform, Record]:
    """The platform and record stored in a claim payload. KeyError for a platform that is not
    running; ValueError (or TypeError) for a payload or reply target that cannot be used."""
    body = orjson.loads(raw)
    inbound: dict[str, Any] = body["inbound"]
    platform = platforms[str(inbound["platform"])]
    notes = body.get("notes") or {}
    msg = Inbound(
        **{name: inbound[name] for name in _FIELDS},
        **{name: inbound[name] for name in _OPTIONAL if name in inbound},
        reply_to=platform.load_reply_to(inbound.get("reply_to")),
        extra_keys=tuple(inbound.get("extra_keys") or ()),
        recovered=notes or None,
    )
    answer = body.get("answer")
    images = tuple(body.get("images") or ())
    return platform, Record(msg, float(body["at"]), dict(notes), answer, images, int(body.get("attempts") or 0))


class Claims:
    """This process's claims: owner id, lease arithmetic, the payload of each message in flight."""

    def __init__(self, store: Store, server: ServerConfig) -> None:
        self.store = store
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.lease, self.ttl = server.claim_lease, server.dedupe_ttl
        #: Payloads of claims a platform retry took over, until the adapter submits the message.
        self.taken: TTLCache[str, str] = TTLCache(maxsize=10_000, ttl=max(60.0, 4 * self.lease))
        #: Messages being answered here, by claim key (what `note` adds to).
        self.active: dict[str, tuple[Platform, Record]] = {}

    async def claim(self, platform: str, key: str) -> Claim:
        full = claim_key(platform, key)
        claim = await self.store.claim_lease(full, owner=self.owner, lease=self.lease, ttl=self.ttl)
        if claim.state is ClaimState.TAKEN_OVER:
            log.info("claim %s ran out unanswered (its process died?): answering it now", full)
            if claim.payload:
                self.taken[full] = claim.payload
        return claim

    async def take(self, full_key: str) -> Claim:
        """For the recovery sweep: take over an expired claim by its full key."""
        return await self.store.claim_lease(full_key, owner=self.owner, lease=self.lease, ttl=self.ttl)

    def record_for(self, platform: Platform, msg: Inbound) -> Record:
        """A new record for a freshly submitted message; what an earlier attempt stored (notes,
        a finished answer) when a retry took its claim over."""
        raw = self.taken.pop(claim_key(msg.platform, msg.event_id), None)
        if raw is not None:
            try:
                _, old = load_record({msg.platform: platform}, raw)
            except (KeyError, ValueError, TypeError) as e:
                log.warning("the stored state of %s message %s is unusable (%s)", msg.platform, msg.event_id, e)
            else:
                msg = dataclasses.replace(msg, recovered=old.notes or None)
                return Record(msg, old.claimed_at, old.notes, old.answer, old.images, old.attempts)
        return Record(msg, time.time())

    async def begin(self, platform: Platform, rec: Record) -> None:
        """Store the message on its claim (the claim must be ours)."""
        key = claim_key(rec.msg.platform, rec.msg.event_id)
        self.active[key] = (platform, rec)
        rec.attempts += 1
        await self._save(key, platform, rec)

    async def note(self, msg: Inbound, fields: JSON) -> None:
        held = self.active.get(claim_key(msg.platform, msg.event_id))
        if held is not None:
            held[1].notes.update(fields)
            await self._save(claim_key(msg.platform, msg.event_id), *held)

    async def answered(self, msg: Inbound, text: str, images: tuple[str, ...]) -> None:
        """Keep the finished answer on the claim, before it is recorded and delivered."""
        held = self.active.get(claim_key(msg.platform, msg.event_id))
        if held is not None:
            held[1].answer, held[1].images = text, images
            await self._save(claim_key(msg.platform, msg.event_id), *held)

    async def _save(self, key: str, platform: Platform, rec: Record) -> None:
        try:
            if not await self.store.renew(key, owner=self.owner, lease=self.lease, payload=rec.dump(platform)):
                log.warning("claim %s is no longer ours; answering it anyway", key)
        except Exception as e:  # the answer still goes out; only a crash now would lose it
            log.warning("storing the state of claim %s failed: %s", key, e)

    async def heartbeat(self, msg: Inbound) -> None:
        """Renew the lease every third of it, until cancelled."""
        key = claim_key(msg.platform, msg.event_id)
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                if not await self.store.renew(key, owner=self.owner, lease=self.lease):
                    log.warning("claim %s was taken over while we were answering it", key)
                    return
            except Exception as e:  # a store hiccup: the next beat tries again
                log.warning("renewing claim %s failed: %s", key, e)

    async def settle(self, msg: Inbound) -> None:
        """The message is answered (or failed for good): DONE for the dedupe ttl."""
        self.active.pop(claim_key(msg.platform, msg.event_id), None)
        more = [claim_key(msg.platform, key) for key in msg.extra_keys]
        await self.store.settle(claim_key(msg.platform, msg.event_id), self.ttl, *more)

    def leave(self, msg: Inbound) -> None:
        """Delivery was cut off (shutdown): the claim runs out and the next process answers."""
        self.active.pop(claim_key(msg.platform, msg.event_id), None)
