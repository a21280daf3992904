"""Prometheus metrics, in a registry of the app's own (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.attempts = Counter(
            "switchboard_provider_attempts",
            "Provider requests by outcome (after retries).",
            ["channel", "provider", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "switchboard_provider_seconds",
            "Provider request time until it answered or failed.",
            ["provider"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.hooks = Counter(
            "switchboard_hook_requests",
            "Inbound platform webhook requests by status.",
            ["platform", "status"],
            registry=self.registry,
        )

    def observe_attempt(self, channel: str, provider: str, outcome: str, seconds: float) -> None:
        self.attempts.labels(channel, provider, outcome).inc()
        self.latency.labels(provider).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
