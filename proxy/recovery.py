"""Recovery: answer platform messages whose claim ran out unanswered, although nobody retries.

Slack, DingTalk, Feishu and Synology are acknowledged before the answer is generated, so after a
crash they will not retry: the message would stay unanswered. At start-up, and then every half
lease, the sweep lists claims whose lease ran out unsettled (`Store.expired_claims`), takes each
over (`claim_lease`, atomic: one process wins) and resubmits the stored message through the
dispatcher, which delivers a stored answer or generates one. A single-instance store (SQLite,
memory) first ends the leases of the previous boot (`Store.release_others`), so recovery starts
at once instead of a lease later.

A message is logged (WARNING, ids only) and settled instead of answered when: it was claimed
longer ago than `server.recover_within`; its platform says the reply target is no longer valid
(`Platform.resumable`, e.g. DingTalk's sessionWebhook expired); its platform is no longer
configured; its stored state cannot be read; or `MAX_ATTEMPTS` processes died answering it
(it may be what kills them). A claim with no message stored (one taken for an event that was then
ignored, or a second key of the same message) is settled quietly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from proxy.claims import PREFIX, load_record
from proxy.config import ServerConfig
from proxy.contracts import ClaimState, Platform
from proxy.dispatch import Dispatcher
from proxy.errors import StoreUnavailable

log = logging.getLogger("switchboard.recovery")
#: Claims taken over per sweep (the rest wait for the next one).
BATCH = 50
#: A message whose answering died with its process this many times is not tried again (it may
#: be what kills the process).
MAX_ATTEMPTS = 3


class Recovery:
    def __init__(self, dispatcher: Dispatcher, platforms: Mapping[str, Platform], server: ServerConfig) -> None:
        self.dispatcher, self.platforms = dispatcher, platforms
        self.claims = dispatcher.claims
        self.interval = max(0.2, server.claim_lease / 2)
        self.recover_within = server.recover_within
        self._stop = asyncio.Event()

    async def start(self) -> None:
        """End an earlier boot's leases (single-instance stores) and start the sweep loop."""
        store = self.claims.store
        if not store.shared:
            ended = await store.release_others(self.claims.owner)
            if ended:
                log.info("%d claim(s) of the previous run were left unsettled: recovering them", ended)
        self.dispatcher.runner.spawn(self._loop(), "recovery")

    def stop(self) -> None:
        self._stop.set()

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.sweep()
            except StoreUnavailable as e:  # the next sweep tries again
                log.warning("recovery sweep skipped: %s", e)
            except Exception:
                log.exception("recovery sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    async def sweep(self) -> int:
        """Take over and answer what ran out; how many messages were resubmitted."""
        resumed = 0
        for key, _ in await self.claims.store.expired_claims(PREFIX, BATCH):
            if key in self.claims.active or self._stop.is_set():
                continue
            claim = await self.claims.take(key)
            if claim.state is ClaimState.TAKEN_OVER:
                resumed += await self._resume(key, claim.payload)
        return resumed

    async def _resume(self, key: str, payload: str | None) -> int:
        if payload is None:
            log.debug("claim %s ran out with no message stored; settled", key)
            await self.claims.store.settle(key, self.claims.ttl)
            return 0
        try:
            platform, rec = load_record(self.platforms, payload)
        except KeyError as e:
            why = f"platform {e} is not running"
        except (ValueError, TypeError) as e:
            why = f"its stored state is unusable ({type(e).__name__}: {e})"
        else:
            msg, age = rec.msg, time.time() - rec.claimed_at
            if age > self.recover_within:
                why = f"claimed {age:.0f} s ago, longer than server.recover_within"
            elif rec.attempts >= MAX_ATTEMPTS:
                why = f"{rec.attempts} attempts at answering it died with their process"
            elif not platform.resumable(msg, rec.claimed_at):
                why = f"{platform.name} can no longer reply to it"
            else:
                log.info("answering %s message %s, left unanswered %.0f s ago", msg.platform, msg.event_id, age)
                self.dispatcher.resume(platform, rec)
                return 1
        log.warning("message of claim %s was never answered and will not be: %s", key, why)
        await self.claims.store.settle(key, self.claims.ttl)
        return 0
