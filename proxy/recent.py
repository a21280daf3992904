"""What happened lately, in memory, for the status page: provider attempts (latency, errors),
platform webhook traffic (status, time to acknowledge, deadline misses) and the last warnings.

Each series is a bounded deque appended to on the request path (O(1)); the statistics are
computed when the page is rendered. Nothing here is shared between instances: the page shows
the instance that renders it (the store-backed usage figures are the exception).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

#: Attempts / webhook requests kept per provider / platform.
KEEP = 1000
#: Warnings and errors kept.
KEEP_ERRORS = 50


@dataclass(frozen=True, slots=True)
class Summary:
    """Over the kept window (at most `KEEP` events, at most `since` seconds back)."""

    count: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    misses: int = 0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.count if self.count else None


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values.sort()
    return values[min(len(values) - 1, int(q * len(values)))]


class Recent:
    def __init__(self) -> None:
        self.attempts: dict[str, deque[tuple[float, float, bool]]] = {}
        self.hooks: dict[str, deque[tuple[float, int, float, bool]]] = {}
        self.errors = ErrorLog()

    def attempt(self, channel: str, provider: str, outcome: str, seconds: float) -> None:
        """A provider attempt ended (the failover observer). A caller's rejected request is not
        the provider's error."""
        series = self.attempts.get(provider)
        if series is None:
            series = self.attempts[provider] = deque(maxlen=KEEP)
        series.append((time.time(), seconds, outcome in ("ok", "RequestRejected", "ContextTooLong")))

    def hook(self, platform: str, status: int, seconds: float, missed: bool) -> None:
        series = self.hooks.get(platform)
        if series is None:
            series = self.hooks[platform] = deque(maxlen=KEEP)
        series.append((time.time(), status, seconds, missed))

    def provider(self, name: str, since: float = 3600.0) -> Summary:
        start = time.time() - since
        kept = [(s, ok) for t, s, ok in self.attempts.get(name, ()) if t >= start]
        ms = [s * 1000 for s, _ in kept]
        return Summary(len(kept), sum(not ok for _, ok in kept), _quantile(ms, 0.5), _quantile(ms[:], 0.95))

    def platform(self, name: str, since: float = 86400.0) -> Summary:
        start = time.time() - since
        kept = [(st, s, m) for t, st, s, m in self.hooks.get(name, ()) if t >= start]
        ms = [s * 1000 for _, s, _ in kept]
        errors = sum(st >= 500 for st, _, _ in kept)
        return Summary(len(kept), errors, _quantile(ms, 0.5), _quantile(ms[:], 0.95), sum(m for _, _, m in kept))


class ErrorLog(logging.Handler):
    """The last warnings and errors of Switchboard's loggers (what the log said: no secrets)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: deque[tuple[float, str, str, str]] = deque(maxlen=KEEP_ERRORS)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break logging
            message = str(record.msg)
        self.records.append((record.created, record.levelname.lower(), record.name, message[:500]))
