"""Failover: the one place that decides about retries, backoff, circuits and the provider chain.

For each provider in the channel's chain, in order:
- skip it while its circuit is open (too many consecutive failed requests, for a cooldown);
- try it; a retryable error (timeout, connect error, 408/409/429/5xx, unparseable answer) is
  retried with exponential backoff and jitter (tenacity), waiting `Retry-After` when the
  upstream gave one — unless that is longer than `retry_after_max`, then we fail over at once;
- a non-retryable provider failure (auth, quota, a config the upstream does not take) moves to
  the next provider directly;
- a `RequestRejected` (the upstream says the caller's request is wrong) ends the chain: it goes
  back to the caller as it is, and counts against no circuit and no key — otherwise one careless
  or hostile caller could open a channel's circuits for everybody.

Only failures whose `counts` is set (the provider's own: connect errors, timeouts, 408/409/429/
5xx, auth, quota, unparseable answers) count toward a circuit.

A streamed answer is committed once its first delta exists: after that we never switch provider;
a later failure surfaces as `StreamInterrupted`. Providers themselves never retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from proxy.config import FailoverConfig
from proxy.contracts import Provider, ProviderState
from proxy.errors import ChainFailed, ProviderError, RequestRejected, StreamInterrupted
from proxy.logs import REQUEST_ID, Event, emit, event, q
from proxy.tracing import NO_SPAN, Span, Tracing
from proxy.types import ChatRequest, Completion, Delta

log = logging.getLogger("switchboard.failover")
T = TypeVar("T")

StateFor = Callable[[str], ProviderState]
Observer = Callable[[str, str, str, float], None]  # channel, provider, outcome, seconds
CircuitObserver = Callable[[str, float | None], None]  # provider, seconds open (None: closed again)


class Circuit:
    """Consecutive-failure breaker for one provider. Half-open after the cooldown: one trial."""

    __slots__ = ("cooldown", "failures", "open_until", "threshold")

    def __init__(self, threshold: int, cooldown: float) -> None:
        self.threshold, self.cooldown = threshold, cooldown
        self.failures = 0
        self.open_until = 0.0

    def allows(self, now: float) -> bool:
        return self.failures < self.threshold or now >= self.open_until

    def succeeded(self) -> bool:
        """Count a success; True when that closed a circuit that had opened."""
        was_open = self.failures >= self.threshold
        self.failures = 0
        return was_open

    def failed(self, now: float) -> bool:
        """Count a failure; True when that opened the circuit (or opened it again after a trial)."""
        self.failures += 1
        if self.failures >= self.threshold:
            self.open_until = now + self.cooldown
            return True
        return False

    def force(self, now: float, open_for: float | None) -> None:
        """Take another instance's finding: open for `open_for` seconds, or closed (None)."""
        if open_for is None:
            self.failures = 0
        else:
            self.failures = max(self.failures, self.threshold)
            self.open_until = max(self.open_until, now + open_for)

    def report(self, now: float) -> tuple[str, float]:
        """`closed`, `open` or `half-open`, and the seconds an open circuit has left."""
        if self.failures < self.threshold:
            return "closed", 0.0
        left = self.open_until - now
        return ("open", left) if left > 0 else ("half-open", 0.0)

    def state(self, now: float) -> str:
        name, left = self.report(now)
        return f"open ({left:.0f}s left)" if name == "open" else name


@dataclass(slots=True)
class Outcome:
    """Which provider answered; filled in as the stream starts."""

    provider: str = ""
    model: str | None = None


def _outcome(err: BaseException) -> str:
    return type(err).__name__ if not isinstance(err, ProviderError) else str(err)


class Failover:
    def __init__(
        self,
        providers: dict[str, Provider],
        config: FailoverConfig,
        observe: Observer | None = None,
        *,
        circuits: dict[str, Circuit] | None = None,
        on_circuit: CircuitObserver | None = None,
        on_retry: Callable[[str], None] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """`circuits`: those of a previous Failover (a reload) to keep, by provider name; they
        keep their counts and take this config's thresholds. `on_circuit(provider, open_for)` is
        told when a circuit opens (for `open_for` seconds) or closes again (None)."""
        self.providers = providers
        self.on_circuit = on_circuit
        self.on_retry = on_retry  # told of each retry of a provider (for /metrics)
        self.tracing = tracing
        self.config = config
        kept = circuits or {}
        self.circuits = {n: kept.get(n) or Circuit(config.circuit_failures, config.circuit_cooldown) for n in providers}
        for c in self.circuits.values():
            c.threshold, c.cooldown = config.circuit_failures, config.circuit_cooldown
        #: Answers running on this Failover now: a reload closes the providers it replaced once
        #: the Failover they belong to has none left.
        self.inflight = 0
        self._observe = observe or (lambda *a: None)

    # -- retry policy ------------------------------------------------------------------------

    def _should_retry(self, err: BaseException) -> bool:
        if not isinstance(err, ProviderError) or not err.retryable:
            return False
        return err.retry_after is None or err.retry_after <= self.config.retry_after_max

    def _delay(self, err: BaseException | None, attempt: int) -> float:
        """Retry-After when the upstream gave one, else exponential backoff with jitter."""
        if isinstance(err, ProviderError) and err.retry_after is not None:
            return max(0.0, err.retry_after)
        c = self.config
        return min(c.backoff_max, c.backoff_base * 2 ** (attempt - 1)) + random.uniform(0, c.backoff_base)

    async def _with_retries(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run `call` once (the fast path); on a retryable error, retry under the policy."""
        try:
            return await call()
        except ProviderError as err:
            if self.config.attempts < 2 or not self._should_retry(err):
                raise
            await asyncio.sleep(self._delay(err, 1))
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self.config.attempts - 1),
            wait=lambda s: self._delay(s.outcome.exception() if s.outcome else None, s.attempt_number + 1),
            retry=retry_if_exception(self._should_retry),
            reraise=True,
        ):
            with attempt:
                if self.on_retry is not None:
                    self.on_retry(name)
                return await call()
        raise AssertionError("unreachable: tenacity re-raises the last error")

    # -- the chain ---------------------------------------------------------------------------

    def _candidates(self, chain: Sequence[str], attempts: list[tuple[str, str]]) -> list[str]:
        now = time.monotonic()
        out = []
        for name in chain:
            circuit = self.circuits.get(name)
            if circuit is None:  # a request that began on a config a reload has since replaced
                attempts.append((name, "skipped, removed by a config reload"))
            elif circuit.allows(now):
                out.append(name)
            else:
                attempts.append((name, "skipped, circuit open"))
        return out

    async def complete(
        self, channel: str, chain: Sequence[str], request: ChatRequest, state_for: StateFor
    ) -> tuple[str, Completion]:
        self.inflight += 1
        try:
            return await self._complete(channel, chain, request, state_for)
        finally:
            self.inflight -= 1

    async def _complete(
        self, channel: str, chain: Sequence[str], request: ChatRequest, state_for: StateFor
    ) -> tuple[str, Completion]:
        attempts: list[tuple[str, str]] = []
        errors: list[ProviderError] = []
        for name in self._candidates(chain, attempts):
            provider = self.providers[name]
            started = time.monotonic()
            span = self._span(channel, name, provider, request)
            try:
                result = await self._with_retries(name, partial(provider.complete, request, state_for(name)))
            except RequestRejected as err:
                span.finish(error=err)
                raise self._rejected(channel, name, err, started) from None
            except ProviderError as err:
                span.finish(error=err)
                self._failed(channel, name, err, started, attempts, errors)
                continue
            except BaseException as err:  # cancelled (the caller left), or a bug
                span.finish(error=err)
                raise
            span.finish(model=result.model, usage=result.usage)
            self._succeeded(channel, name, started)
            return name, result
        raise ChainFailed(channel, attempts, errors)

    async def run(self, channel: str, chain: Sequence[str], call: Callable[[Provider], Awaitable[T]]) -> tuple[str, T]:
        """`call(provider)` down the chain with the same retries, circuits, failover and
        bookkeeping as a chat answer (for requests that are not chat: embeddings)."""
        attempts: list[tuple[str, str]] = []
        errors: list[ProviderError] = []
        self.inflight += 1
        try:
            for name in self._candidates(chain, attempts):
                started = time.monotonic()
                try:
                    result = await self._with_retries(name, partial(call, self.providers[name]))
                except RequestRejected as err:
                    raise self._rejected(channel, name, err, started) from None
                except ProviderError as err:
                    self._failed(channel, name, err, started, attempts, errors)
                    continue
                self._succeeded(channel, name, started)
                return name, result
            raise ChainFailed(channel, attempts, errors)
        finally:
            self.inflight -= 1

    async def stream(
        self, channel: str, chain: Sequence[str], request: ChatRequest, state_for: StateFor, outcome: Outcome
    ) -> AsyncIterator[Delta]:
        """Deltas of the first provider that starts answering. Close it (aclose) to stop early."""
        attempts: list[tuple[str, str]] = []
        errors: list[ProviderError] = []
        self.inflight += 1
        try:
            for name in self._candidates(chain, attempts):
                provider = self.providers[name]
                started = time.monotonic()
                span = self._span(channel, name, provider, request)
                try:
                    it, first = await self._with_retries(name, partial(_open, provider, request, state_for(name)))
                except RequestRejected as err:
                    span.finish(error=err)
                    raise self._rejected(channel, name, err, started) from None
                except ProviderError as err:
                    span.finish(error=err)
                    self._failed(channel, name, err, started, attempts, errors)
                    continue
                except BaseException as err:
                    span.finish(error=err)
                    raise
                outcome.provider, outcome.model = name, request.model or provider.default_model
                usage, failure = None, None
                try:
                    async with contextlib.aclosing(it):  # type: ignore[type-var]
                        try:
                            if first is not None:
                                usage = first.usage
                                yield first
                            async for delta in it:
                                if delta.usage:
                                    usage = delta.usage
                                yield delta
                        except ProviderError as err:
                            failure = err
                            self._failed(channel, name, err, started, attempts, errors)
                            raise StreamInterrupted(err.message, provider=name, status=err.status) from err
                finally:  # also when the caller stopped or left early
                    span.finish(model=outcome.model, usage=usage, error=failure)
                self._succeeded(channel, name, started)
                return
            raise ChainFailed(channel, attempts, errors)
        finally:
            self.inflight -= 1

    # -- bookkeeping -------------------------------------------------------------------------

    def _span(self, channel: str, name: str, provider: Provider, request: ChatRequest) -> Span:
        tracing = self.tracing
        if tracing is None or tracing.tracer is None:
            return NO_SPAN
        model = request.model or provider.default_model
        return tracing.attempt(provider.config.kind, channel, name, model, REQUEST_ID.get())

    def _succeeded(self, channel: str, name: str, started: float) -> None:
        if self.circuits[name].succeeded() and self.on_circuit is not None:
            self.on_circuit(name, None)
        seconds = time.monotonic() - started
        self._observe(channel, name, "ok", seconds)
        if log.isEnabledFor(logging.INFO):
            emit(log, logging.INFO, Attempt(REQUEST_ID.get(), channel, name, seconds))

    def _rejected(self, channel: str, name: str, err: RequestRejected, started: float) -> RequestRejected:
        """The caller's error: observed and logged, nothing counted against the provider."""
        seconds = time.monotonic() - started
        err.provider = err.provider or name
        self._observe(channel, name, "RequestRejected", seconds)
        event(
            log,
            logging.INFO,
            "attempt",
            request_id=REQUEST_ID.get(),
            channel=channel,
            provider=name,
            outcome=type(err).__name__,
            status=err.status,
            latency_ms=round(seconds * 1000, 1),
            error=err.message,
        )
        return err

    def _failed(
        self,
        channel: str,
        name: str,
        err: ProviderError,
        started: float,
        attempts: list[tuple[str, str]],
        errors: list[ProviderError],
    ) -> None:
        if err.counts:
            circuit = self.circuits[name]
            if circuit.failed(time.monotonic()) and self.on_circuit is not None:
                self.on_circuit(name, circuit.cooldown)
        seconds = time.monotonic() - started
        err.provider = err.provider or name
        attempts.append((name, err.message + (f" (HTTP {err.status})" if err.status else "")))
        errors.append(err)
        self._observe(channel, name, type(err).__name__, seconds)
        event(
            log,
            logging.WARNING,
            "attempt",
            request_id=REQUEST_ID.get(),
            channel=channel,
            provider=name,
            outcome=type(err).__name__,
            status=err.status,
            latency_ms=round(seconds * 1000, 1),
            error=err.message,
        )


class Attempt(Event):
    """The log line of an upstream attempt that answered (failed ones carry their error and go
    through `event`)."""

    __slots__ = ("channel", "provider", "request_id", "seconds")
    event = "attempt"

    def __init__(self, request_id: str | None, channel: str, provider: str, seconds: float) -> None:
        self.request_id, self.channel, self.provider, self.seconds = request_id, channel, provider, seconds

    def __str__(self) -> str:  # `render(self.event, self.fields())`, faster
        rid = "" if self.request_id is None else f"request_id={self.request_id} "
        where = f"channel={q(self.channel)} provider={q(self.provider)}"
        return f"attempt {rid}{where} outcome=ok latency_ms={self.seconds * 1000:.1f}"

    def fields(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "channel": self.channel,
            "provider": self.provider,
            "outcome": "ok",
            "latency_ms": round(self.seconds * 1000, 1),
        }


async def _open(
    provider: Provider, request: ChatRequest, state: ProviderState
) -> tuple[AsyncIterator[Delta], Delta | None]:
    """Start a provider stream and wait for its first delta (so failures before it can fail over)."""
    it = provider.stream(request, state).__aiter__()
    try:
        first = await it.__anext__()
    except StopAsyncIteration:
        return it, None
    except BaseException:
        with contextlib.suppress(Exception):
            await it.aclose()  # type: ignore[attr-defined]
        raise
    return it, first
