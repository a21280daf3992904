"""Chat-platform messages: commands, routing, background generation and delivery.

Platform adapters call `ctx.submit(platform, msg)`; from there every platform is treated alike:
`/clear` and `/help`, a polite line for non-text messages, channel routing, the session's
history, failover, the transcript, and finally `platform.deliver(msg, answer)`. Every message is
answered under its leased claim (`proxy/claims.py`), so one cut off by a crash is answered by the
next process, and one whose answer was already generated is delivered, not generated again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import aiohttp
from cachetools import TTLCache

from proxy.bus import Bus
from proxy.chat_admin import ChatAdmin
from proxy.claims import Claims, Record, claim_key
from proxy.config import Channel, Settings
from proxy.contracts import Claim, ClaimState, Platform, Store
from proxy.engine import Engine
from proxy.errors import (
    ChainFailed,
    ContextTooLong,
    DeliveryError,
    OverLimit,
    QuotaExceeded,
    RequestRejected,
    StoreUnavailable,
    StreamInterrupted,
)
from proxy.failover import Outcome
from proxy.limiter import NO_GRANT, Grant
from proxy.limits import Limits, Target
from proxy.logs import REQUEST_ID, event, request_id
from proxy.routing import conversation_key, route
from proxy.runner import Runner
from proxy.texts import BUNDLES, Texts
from proxy.types import ChatRequest, Delta, Inbound, Message, RequestObserver, Usage

log = logging.getLogger("switchboard.dispatch")

CLEAR_COMMANDS = {"/clear", "\\clear", "#clear"}
HELP_COMMANDS = {"/help", "\\help", "#help"}
MODEL_COMMANDS = {"/model", "\\model", "#model"}
#: Answered only for a platform's `admins` (and only where the platform has some).
ADMIN_COMMANDS = {f"{lead}{word}": word for word in ("reload", "status", "usage") for lead in "/\\#"}
#: The provider state key holding a session's `/model` choice (`/clear` forgets it with the rest).
PINNED = "@model"


def rejected_text(err: RequestRejected, texts: Texts) -> str:
    """What the user reads when the backend refused their message (a caller error)."""
    reason = err.message.strip()
    if isinstance(err, ContextTooLong):
        return texts["too_long"]
    if len(reason) > 200:
        reason = reason[:199] + "…"
    return texts.say("rejected", reason=reason or f"HTTP {err.status}")


def failed_text(err: ChainFailed, texts: Texts) -> str:
    """The apology, or the quota notice when every provider tried was out of quota."""
    if err.errors and all(isinstance(e, QuotaExceeded) for e in err.errors):
        return texts["quota"]
    return texts["apology"]


def help_text(texts: Texts, channel: str, extra: str | None) -> str:
    return texts.say("help", channel=channel) + (f"\n{extra}" if extra else "")


class Answer:
    """Implements `proxy.contracts.Answer`. A generated answer runs its upstream stream in a
    producer task, so `stop()` can close the upstream even while it is waiting for a chunk."""

    def __init__(self, texts: Texts = BUNDLES["en"]) -> None:
        self.texts = texts  # for the apology or cut-off note this answer may end with
        self.text = ""
        self.images: tuple[str, ...] = ()
        self.failed = self.stopped = self.replaced = False
        self.usage: Usage | None = None  # as the upstream reported it
        self.grant: Grant = NO_GRANT  # the limits this answer counts against
        self.channel: str | None = None  # for the message's log line and metrics
        self.chain: tuple[str, ...] = ()  # the channel's providers, in failover order
        self.outcome: Outcome | None = None
        self.tokens: tuple[int, int, bool] | None = None
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._producer: asyncio.Task[None] | None = None
        self._streaming = True

    @classmethod
    def fixed(cls, text: str, images: tuple[str, ...] = ()) -> Answer:
        a = cls()
        a.text, a.images = text, images
        a._queue.put_nowait(text)
        a._queue.put_nowait(None)
        return a

    @classmethod
    def generated(
        cls, source: AsyncIterator[Delta], on_done: Callable[[Answer], Awaitable[None]], texts: Texts
    ) -> Answer:
        a = cls(texts)
        a._producer = asyncio.create_task(a._produce(source, on_done))
        return a

    async def _produce(self, source: AsyncIterator[Delta], on_done: Callable[[Answer], Awaitable[None]]) -> None:
        try:
            try:
                async with contextlib.aclosing(source):  # type: ignore[type-var]
                    async for d in source:
                        self._take(d)
            except asyncio.CancelledError:
                self.stopped = True
            except StreamInterrupted as err:
                log.warning("answer cut off: %s", err)
                self._emit(self.texts["cut_off"])
            except RequestRejected as err:
                log.info("the backend refused the message: %s", err)
                self.failed = True
                self._emit(rejected_text(err, self.texts))
            except ChainFailed as err:
                log.warning("no answer: %s", err)
                self.failed = True
                self._emit(failed_text(err, self.texts))
            except Exception:
                log.exception("answer failed")
                self.failed = True
                self._emit(self.texts["apology"])
            # The transcript is written before the answer counts as finished, so a delivery that
            # ends (and closes the answer) can never cut the write short.
            self._streaming = False
            if not self.failed:
                try:
                    await on_done(self)
                except Exception:
                    log.exception("recording the transcript failed")
        finally:
            self._queue.put_nowait(None)

    def _take(self, d: Delta) -> None:
        if d.usage:
            self.usage = d.usage
        if d.images:
            self.images += d.images
        if d.replace:
            self.replaced = True
            self.text = d.text
            self._queue.put_nowait(d.text)
        elif d.text:
            self._emit(d.text)

    def _emit(self, piece: str) -> None:
        self.text += piece
        self._queue.put_nowait(piece)

    async def __aiter__(self) -> AsyncIterator[str]:
        while (piece := await self._queue.get()) is not None:
            yield piece

    def stop(self) -> None:
        """Close the upstream stream. A no-op once the answer is complete."""
        if self._producer is not None and self._streaming and not self._producer.done():
            self._producer.cancel()

    async def close(self) -> None:
        """Release the upstream if delivery ended early; let a finished answer's transcript
        write complete."""
        if self._producer is not None:
            self.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await self._producer


class Job:
    """Implements `proxy.contracts.Job`."""

    def __init__(self, msg: Inbound) -> None:
        self.msg = msg
        self.answer: Answer | None = None
        self._stop_requested = False
        self._finished = asyncio.Event()
        self._text = ""

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def attach(self, answer: Answer) -> None:
        self.answer = answer
        if self._stop_requested:
            answer.stop()

    def stop(self) -> None:
        self._stop_requested = True
        if self.answer is not None:
            self.answer.stop()

    def done(self) -> bool:
        return self._finished.is_set()

    async def wait(self) -> str:
        await self._finished.wait()
        return self._text

    def finish(self, text: str) -> None:
        self._text = text
        self._finished.set()


class Dispatcher:
    def __init__(
        self, engine: Engine, runner: Runner, settings: Settings, finished: RequestObserver | None = None
    ) -> None:
        self.engine, self.runner, self.settings = engine, runner, settings
        self.finished = finished  # metrics of each finished message
        #: Told of each platform delivery not answered again (a duplicate or a retry), by platform name.
        self.duplicate: Callable[[str], None] = lambda platform: None
        self.claims = Claims(engine.store, settings.raw.server)
        #: What /reload, /status and /usage do in chat (set by the app; None: not offered).
        self.admin: ChatAdmin | None = None

    def context(self, platform_name: str) -> PlatformCtx:
        return PlatformCtx(platform_name, self)

    def submit(self, platform: Platform, msg: Inbound) -> Job:
        return self.resume(platform, self.claims.record_for(platform, msg))

    def resume(self, platform: Platform, rec: Record) -> Job:
        """Answer the message of `rec` (its claim is ours), from where an earlier attempt left."""
        job = Job(rec.msg)
        self.claims.active[claim_key(rec.msg.platform, rec.msg.event_id)] = (platform, rec)
        # Not `bounded`: the message is stored on its claim and the lease kept alive at once,
        # also while it waits for a generation slot.
        self.runner.spawn(self._run(platform, rec, job), f"reply:{platform.name}:{rec.msg.event_id}")
        return job

    async def _run(self, platform: Platform, rec: Record, job: Job) -> None:
        msg = rec.msg
        answer: Answer | None = None
        beat: asyncio.Task[None] | None = None
        finished = True  # settle the claim at the end (not when shutdown cut the delivery off)
        started, result = time.monotonic(), "answered"
        if REQUEST_ID.get() is None:  # a recovered message: no webhook request started it
            REQUEST_ID.set(request_id())
        try:
            await self.claims.begin(platform, rec)
            beat = asyncio.create_task(self.claims.heartbeat(msg))
            async with self.runner.slots:
                try:
                    answer = await self._answer(platform, msg, rec, job)
                except StoreUnavailable as e:  # claimed, then the store went away: apologise
                    self.engine.store_failed("answer")
                    log.warning("no answer to %s message %s: %s", platform.name, msg.event_id, e)
                    answer = Answer.fixed(platform.texts["apology"])
                    answer.failed = True
                if answer is not None:  # None: over a limit, and the user was told this window
                    job.attach(answer)
                    await platform.deliver(msg, answer)
        except asyncio.CancelledError:
            finished, result = False, "shutdown"
            await self._undelivered(msg, "shutdown")
            raise
        except DeliveryError as e:
            result = "undelivered"
            log.warning("reply to %s message %s not delivered: %s", platform.name, msg.event_id, e)
            await self._undelivered(msg, "delivery failed")
        except Exception:
            result = "undelivered"
            log.exception("delivering the answer to %s message %s failed", platform.name, msg.event_id)
            await self._undelivered(msg, "delivery failed")
        finally:
            if beat is not None:
                beat.cancel()
            if answer is not None:
                await answer.close()
                if answer.failed or answer.stopped:
                    await answer.grant.release()
                else:
                    await answer.grant.finish(answer.usage, answer.text)
            await self._end_claim(msg, finished)
            job.finish(answer.text if answer else "")
            if answer is None:
                result = "limited" if result == "answered" else result
            elif result == "answered":
                result = "failed" if answer.failed else "stopped" if answer.stopped else result
            if self.finished is not None:
                outcome = answer.outcome if answer else None
                failover = bool(outcome and outcome.provider and answer and answer.chain[:1] != (outcome.provider,))
                seconds = time.monotonic() - started
                self.finished(msg.platform, answer.channel if answer else None, result, seconds, None, failover)
            if log.isEnabledFor(logging.INFO):
                self._log_message(msg, answer, result, started)

    def _log_message(self, msg: Inbound, answer: Answer | None, result: str, started: float) -> None:
        p, c, est = (answer.tokens if answer else None) or (None, None, None)
        outcome = answer.outcome if answer else None
        content = self.settings.raw.server.log_content and answer is not None
        event(
            log,
            logging.INFO,
            "message",
            request_id=REQUEST_ID.get(),
            platform=msg.platform,
            event_id=msg.event_id,
            channel=answer.channel if answer else None,
            provider=(outcome.provider or None) if outcome else None,
            outcome=result,
            latency_ms=round((time.monotonic() - started) * 1000, 1),
            tokens_in=p,
            tokens_out=c,
            tokens_estimated=est or None,
            recovered=msg.recovered is not None or None,
            text=msg.text if content else None,
            answer=answer.text if content and answer else None,
        )

    async def _end_claim(self, msg: Inbound, finished: bool) -> None:
        if not finished:
            self.claims.leave(msg)
            return
        try:
            await asyncio.shield(self.claims.settle(msg))
        except Exception as e:  # the claim runs out and the message may be answered again
            log.warning("settling the claim of %s message %s failed: %s", msg.platform, msg.event_id, e)

    async def _ensure_recorded(self, conversation: str, turn: list[Message], text: str) -> None:
        """Record a recovered answer unless the transcript already ends with this exchange (the
        crash came after the record, before delivery)."""
        if await self.engine.store.history(conversation, 1) != [*turn, Message("assistant", text)]:
            await self.engine.record(conversation, turn, text)

    async def _undelivered(self, msg: Inbound, why: str) -> None:
        with contextlib.suppress(Exception):
            await self.engine.store.put(f"undelivered:{msg.platform}:{msg.event_id}", why, 7 * 86400)

    async def _answer(self, platform: Platform, msg: Inbound, rec: Record, job: Job) -> Answer | None:
        routed = self._route(msg)
        if routed is None:
            if msg.kind != "text":
                return Answer.fixed(platform.texts["unsupported"])
            log.info("no channel matches %s chat=%s user=%s", msg.platform, msg.chat_id, msg.user_id)
            return Answer.fixed(platform.texts["no_channel"])
        channel, body = routed
        texts = platform.texts.over(channel.config.texts)
        if msg.kind != "text":
            return Answer.fixed(texts["unsupported"])
        conversation = conversation_key(channel, msg)
        command = body.strip().lower()
        if command in CLEAR_COMMANDS:
            await self.engine.store.clear(conversation)
            return Answer.fixed(texts["cleared"])
        if command in HELP_COMMANDS or not command:
            return Answer.fixed(help_text(texts, channel.name, platform.help_text()))
        word, _, arg = body.strip().partition(" ")
        word = word.lower()
        if word in MODEL_COMMANDS:
            return Answer.fixed(await self._choose_model(channel, conversation, arg.strip(), texts))
        admins = getattr(platform.config, "admins", None)
        if word in ADMIN_COMMANDS and admins and self.admin is not None:
            if msg.user_id not in admins:
                return Answer.fixed(texts.say("admin_only", command=word))
            return Answer.fixed(await self.admin.run(ADMIN_COMMANDS[word], msg.platform, msg.user_id))
        turn = [Message("user", body.strip())]
        if rec.answer is not None:  # generated (and recorded) before a crash: deliver it as it was
            await self._ensure_recorded(conversation, turn, rec.answer)
            return Answer.fixed(rec.answer, rec.images)
        mod = channel.moderation

        async def flag(provider: str, text: str) -> bool:
            return await self.engine.moderate(channel.name, provider, text)

        if mod is not None and await mod.blocks(body, flag):
            log.info("%s message %s blocked by channel %s's moderation", msg.platform, msg.event_id, channel.name)
            return Answer.fixed(texts["blocked"])
        earlier = await platform.context(msg, channel.config.history) if channel.config.history else None
        request = await self.engine.request(
            channel, turn, conversation=conversation, user=f"{msg.platform}:{msg.user_id}", history=earlier
        )
        limits = self.settings.limits
        grant = NO_GRANT
        if limits.active:
            try:
                grant = await self._admit(limits, channel.name, msg, request)
            except OverLimit as e:
                return await self._over_limit(limits, e, channel.name, msg, texts)
        outcome = Outcome()
        chain = await self._chain(channel, conversation)
        source = self.engine.stream(channel, request, outcome, chain)
        if mod is not None and mod.output:
            source = mod.screen(source, flag, texts["blocked_output"])

        async def record(answer: Answer) -> None:
            answer.tokens = self.engine.usage.note(
                channel=channel.name,
                provider=outcome.provider,
                model=outcome.model,
                platform=msg.platform,
                user=msg.user_id,
                usage=answer.usage,
                prompt=request.messages,
                answer=answer.text,
            )
            if answer.stopped and not job.stop_requested:
                return  # cut off by shutdown, not by the user: the next process answers it whole
            await self.claims.answered(msg, answer.text, answer.images)
            await self.engine.record(conversation, turn, answer.text)

        answer = Answer.generated(source, record, texts)
        answer.grant, answer.channel, answer.outcome = grant, channel.name, outcome
        answer.chain = tuple(chain or channel.providers)
        return answer

    async def _chain(self, channel: Channel, conversation: str) -> tuple[str, ...] | None:
        """The session's `/model` choice first, then the channel's chain; None: the channel's."""
        if not channel.choosable:
            return None
        state = await self.engine.store.get_state(conversation, PINNED)
        pinned = state.get("provider") if isinstance(state, dict) else None
        if pinned not in channel.choosable:  # none, or no longer offered after a reload
            return None
        return (str(pinned), *(p for p in channel.providers if p != pinned))

    async def _choose_model(self, channel: Channel, conversation: str, name: str, texts: Texts) -> str:
        """`/model` (what is used, what may be chosen) and `/model NAME` (choose it)."""
        choices = channel.choosable
        current = (await self._chain(channel, conversation) or channel.providers or ("-",))[0]
        if not choices:
            return texts.say("model_fixed", current=current)
        if not name:
            return texts.say("model_current", current=current, choices=", ".join(choices))
        chosen = next((c for c in choices if c.lower() == name.lower()), None)
        if chosen is None:
            return texts.say("model_unknown", model=name, choices=", ".join(choices))
        await self.engine.store.set_state(conversation, PINNED, {"provider": chosen})
        return texts.say("model_set", model=chosen)

    def _route(self, msg: Inbound) -> tuple[Channel, str] | None:
        """The channel that answers `msg` and the text it reads: the one the adapter named, else
        the first that matches."""
        if msg.channel is None:
            return route(self.settings.channels, msg)
        channel = self.settings.by_name.get(msg.channel)
        return (channel, msg.text) if channel is not None else None

    async def _admit(self, limits: Limits, channel: str, msg: Inbound, request: ChatRequest) -> Grant:
        targets = []
        if (rule := limits.user(msg.platform, msg.user_id)) is not None:
            targets.append(Target(rule, f"{msg.platform}:{msg.user_id}"))
        if (target := limits.channel_targets.get(channel)) is not None:
            targets.append(target)
        if not targets:
            return NO_GRANT
        grant = await self.engine.limiter.admit(targets, limits.slot_lease)
        grant.prompt = request.messages
        return grant

    async def _over_limit(
        self, limits: Limits, e: OverLimit, channel: str, msg: Inbound, texts: Texts
    ) -> Answer | None:
        """One notice per user, limit and window (remembered in the store, so also across
        instances); later messages in the window get no answer at all."""
        log.info("%s user over the %s limit of %s %s", msg.platform, e.kind, e.rule.scope, e.rule.name)
        window_left = e.retry_after if e.kind != "concurrent" else e.window
        noticed = f"limit-notice:{msg.platform}:{msg.user_id}:{e.rule.scope}:{e.kind}"
        if not await self.engine.store.claim(noticed, max(window_left, 0.5)):
            return None
        text = limits.notice(e.rule, limits.channels.get(channel), msg.platform) or texts.say("limited", wait="{wait}")
        return Answer.fixed(text.replace("{wait}", texts.wait(e.retry_after)))


class PlatformCtx:
    """Implements `proxy.contracts.PlatformContext` for one platform instance."""

    def __init__(self, name: str, dispatcher: Dispatcher) -> None:
        self.name = name
        self._d = dispatcher
        #: Keys this context claimed and has not submitted yet: `submit` takes only those.
        self._claimed: TTLCache[str, bool] = TTLCache(maxsize=100_000, ttl=600)

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._d.engine.http is not None, "the engine is not started"
        return self._d.engine.http

    @property
    def store(self) -> Store:
        return self._d.engine.store

    @property
    def bus(self) -> Bus:
        return self._d.engine.bus

    async def claim(self, key: str) -> Claim:
        if claim_key(self.name, key) in self._d.claims.active:  # being answered here
            claim = Claim(ClaimState.IN_FLIGHT)
        else:
            claim = await self._d.claims.claim(self.name, key)
        if not claim:
            self._d.duplicate(self.name)
        else:
            self._claimed[key] = True
        return claim

    async def accept(self, platform: Platform, msg: Inbound) -> Job | None:
        """Claim `msg` (its event id and every extra key) and submit it; None for a duplicate."""
        for key in (msg.event_id, *msg.extra_keys):
            if not await self.claim(key):
                return None
        return self.submit(platform, msg)

    async def note(self, msg: Inbound, **fields: Any) -> None:
        await self._d.claims.note(msg, fields)

    async def settle(self, key: str) -> None:
        await self.store.settle(claim_key(self.name, key), self._d.claims.ttl)

    def submit(self, platform: Platform, msg: Inbound) -> Job:
        if self._claimed.pop(msg.event_id, None) is None:
            # an adapter that skipped dedupe would answer every retry: refuse, loudly, in tests
            raise RuntimeError(f"{self.name}: submit of {msg.event_id!r} without a claim (use ctx.accept)")
        return self._d.submit(platform, msg)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        self._d.runner.spawn(coro, f"{self.name}:{name}")
