"""Prometheus metrics, in a registry of the app's own (no global state)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from proxy.hot_metrics import HistogramChild, LoopCounter, LoopHistogram, LoopMetrics


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # The request path's metrics (updated on every answer) are loop metrics: no lock per update.
        self.attempts = LoopCounter(
            "switchboard_provider_attempts",
            "Provider requests by outcome (after retries).",
            ["channel", "provider", "outcome"],
        )
        self.latency = LoopHistogram(
            "switchboard_provider_seconds",
            "Provider request time until it answered or failed.",
            ["provider"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.requests = LoopCounter(
            "switchboard_requests",
            "Finished requests by door (openai, or the platform's name for chat messages), channel ('-' before one "
            "was chosen) and outcome: ok, refused (4xx), error (5xx), client_gone; for chat messages answered, failed, "
            "stopped, limited, undelivered, shutdown.",
            ["door", "channel", "outcome"],
        )
        self.request_seconds = LoopHistogram(
            "switchboard_request_seconds",
            "Time from a request's arrival (or a chat message's submission) to its end, by door.",
            ["door"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.ttft = LoopHistogram(
            "switchboard_time_to_first_token_seconds",
            "Streamed API requests: time from arrival to the first byte of the answer sent.",
            ["channel"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.failovers = LoopCounter(
            "switchboard_failovers",
            "Answers given by a provider other than the first of their channel's chain.",
            ["channel"],
        )
        self.retries = Counter(
            "switchboard_provider_retries",
            "Retries of a provider after a retryable error (timeouts, 429/5xx, ...), before any failover.",
            ["provider"],
            registry=self.registry,
        )
        self.store_errors = Counter(
            "switchboard_store_errors",
            "Requests that found the store unavailable, by where: openai, a platform's name (its webhook), "
            "answer (a chat message already claimed).",
            ["where"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "switchboard_platform_duplicates",
            "Platform deliveries not answered again: a retry or a duplicate of a message answered or being answered.",
            ["platform"],
            registry=self.registry,
        )
        self._requests: dict[tuple[str, str, str], tuple[list[float], HistogramChild]] = {}
        self._ttft: dict[str, HistogramChild] = {}
        self.hooks = Counter(
            "switchboard_hook_requests",
            "Inbound platform webhook requests by status (499: the client left before its body arrived).",
            ["platform", "status"],
            registry=self.registry,
        )
        self.deadline_misses = Counter(
            "switchboard_platform_deadline_misses",
            "Webhook requests acknowledged later than the platform waits (its ack deadline), by platform.",
            ["platform"],
            registry=self.registry,
        )
        self.refused = Counter(
            "switchboard_api_requests_refused",
            "OpenAI API requests answered with a 4xx by status and reason: Switchboard's own (a bad "
            "key, an unknown channel, an invalid, slow or too large request) or upstream_rejected "
            "(the backend refused the caller's request).",
            ["status", "reason"],
            registry=self.registry,
        )
        self._refused: dict[tuple[int, str], Counter] = {}
        self.limited = Counter(
            "switchboard_limited_requests",
            "Requests refused by a configured limit (OpenAI API 429s and chat messages), by limit "
            "kind (rpm, tokens_per_day, concurrent), scope (key, channel, user) and name (a key's "
            "name or keys[N], a channel, or the `limits.users` entry that applied, e.g. *).",
            ["kind", "scope", "name"],
            registry=self.registry,
        )
        self.tokens = LoopCounter(
            "switchboard_tokens",
            "Tokens spent by channel, model and direction (prompt, completion), as the upstream reported them "
            "or estimated when it did not.",
            ["channel", "model", "direction"],
        )
        self._tokens: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
        self.reloads = Counter(
            "switchboard_config_reloads",
            "Config reloads by trigger (sighup, watch, admin) and outcome: changed, unchanged, or "
            "failed (the config was invalid and the running one stayed).",
            ["trigger", "outcome"],
            registry=self.registry,
        )

        hot: list[LoopCounter | LoopHistogram] = [self.attempts, self.latency, self.requests, self.request_seconds]
        self.registry.register(LoopMetrics([*hot, self.ttft, self.failovers, self.tokens]))
        # children by their labels, looked up once per request. Bounded by the config (channels
        # x providers x error kinds).
        self._children: dict[tuple[str, str, str], tuple[list[float], HistogramChild]] = {}

    def observe_attempt(self, channel: str, provider: str, outcome: str, seconds: float) -> None:
        key = (channel, provider, outcome)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.attempts.child(*key), self.latency.child(provider))
        children[0][0] += 1
        children[1].observe(seconds)

    def observe_request(
        self, door: str, channel: str | None, outcome: str, seconds: float, ttft: float | None, failover: bool
    ) -> None:
        """One finished request or chat message. Labels come from config (door, channel) and a
        fixed set of outcomes."""
        key = (door, channel or "-", outcome)
        children = self._requests.get(key)
        if children is None:
            children = self._requests[key] = (self.requests.child(*key), self.request_seconds.child(door))
        children[0][0] += 1
        children[1].observe(seconds)
        if ttft is not None and channel:
            child = self._ttft.get(channel)
            if child is None:
                child = self._ttft[channel] = self.ttft.child(channel)
            child.observe(ttft)
        if failover and channel:
            self.failovers.child(channel)[0] += 1

    def count_refused(self, status: int, reason: str) -> None:
        """One refused API request. `reason` is one of our own codes (a bounded set)."""
        child = self._refused.get((status, reason))
        if child is None:
            child = self._refused[status, reason] = self.refused.labels(str(status), reason)
        child.inc()

    def count_tokens(self, channel: str, model: str, prompt: int, completion: int) -> None:
        """Tokens of one answer. The model label comes from the config or the upstream's answer
        for a configured channel (bounded in practice by the providers' model lists)."""
        children = self._tokens.get((channel, model))
        if children is None:
            children = self._tokens[channel, model] = (
                self.tokens.child(channel, model, "prompt"),
                self.tokens.child(channel, model, "completion"),
            )
        children[0][0] += prompt
        children[1][0] += completion

    def count_reload(self, trigger: str, outcome: str) -> None:
        self.reloads.labels(trigger, outcome).inc()

    def count_limited(self, kind: str, scope: str, name: str) -> None:
        """One request refused by a limit; the labels come from config (bounded)."""
        self.limited.labels(kind, scope, name).inc()

    def watch(self, circuits: Callable[[], dict[str, tuple[str, float]]], inflight: Callable[[], int]) -> None:
        """Gauges read when scraped: each enabled provider's circuit and the answers in flight."""
        self.registry.register(_Live(circuits, inflight))

    def watch_connections(self, status: Callable[[], dict[str, dict[str, object]]]) -> None:
        """Gauges read when scraped: each connection-mode platform's state and reconnects."""
        self.registry.register(_Links(status))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Links(Collector):
    def __init__(self, status: Callable[[], dict[str, dict[str, object]]]) -> None:
        self.status = status

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "switchboard_platform_connected",
            "Connection-mode platforms (Slack Socket Mode, ...): 1 while the connection is up.",
            labels=["platform"],
        )
        again = CounterMetricFamily(
            "switchboard_platform_reconnects",
            "Times a connection-mode platform's connection ended and was made again.",
            labels=["platform"],
        )
        for name, link in self.status().items():
            up.add_metric([name], 1 if link["state"] == "connected" else 0)
            again.add_metric([name], float(link["reconnects"]))  # type: ignore[arg-type]
        yield up
        yield again


#: `switchboard_circuit_state` values.
CIRCUIT_STATES = {"closed": 0, "half-open": 1, "open": 2}


class _Live(Collector):
    def __init__(self, circuits: Callable[[], dict[str, tuple[str, float]]], inflight: Callable[[], int]) -> None:
        self.circuits, self.inflight = circuits, inflight

    def collect(self) -> Iterable[Metric]:
        state = GaugeMetricFamily(
            "switchboard_circuit_state",
            "Each enabled provider's circuit: 0 closed, 1 half-open (the next request is a trial), 2 open (skipped).",
            labels=["provider"],
        )
        left = GaugeMetricFamily(
            "switchboard_circuit_open_seconds",
            "Seconds an open circuit has left (0 when not open).",
            labels=["provider"],
        )
        for provider, (name, seconds) in sorted(self.circuits().items()):
            state.add_metric([provider], CIRCUIT_STATES.get(name, 0))
            left.add_metric([provider], max(0.0, seconds))
        yield state
        yield left
        yield GaugeMetricFamily(
            "switchboard_generations_in_flight",
            "Answers being generated now (API requests and platform messages).",
            value=self.inflight(),
        )
