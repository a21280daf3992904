"""What `Provider.probe()` returns: per key, whether the upstream answers a cheap call.

`switchboard check --live` prints one line per result and fails when an enabled provider has no
usable result at all. Outcomes are read from the error tree (`ProbeResult.of_error`), so a probe
maps failures exactly as a real request would: a 401/403 is "auth failed", a refused connection
"unreachable", a 404 (unknown path or model) "misconfigured".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from proxy.errors import (
    AuthFailed,
    Misconfigured,
    ProviderError,
    ProviderTimeout,
    QuotaExceeded,
    RateLimited,
    RequestRejected,
)

#: Seconds one probe call may take, connecting included.
PROBE_SECONDS = 5.0


class ProbeOutcome(enum.StrEnum):
    REACHABLE = "reachable"  #: answered, and took the key
    AUTH_FAILED = "auth failed"  #: 401/403: the key is wrong or revoked
    QUOTA = "quota"  #: the key's quota or credit is exhausted
    UNREACHABLE = "unreachable"  #: no connection, or the upstream is failing (5xx)
    TIMED_OUT = "timed out"  #: no answer within PROBE_SECONDS
    MISCONFIGURED = "misconfigured"  #: answered, but our config does not fit (path, model, app mode)
    NOT_PROBED = "not probed"  #: nothing to call (no network), or nothing safe to call

    @property
    def usable(self) -> bool:
        """Could a request through this key succeed, as far as the probe can tell?"""
        return self in (ProbeOutcome.REACHABLE, ProbeOutcome.NOT_PROBED)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probed key: `key` is masked (`sk-…abcd`), or "-" for a keyless upstream. `detail`
    must hold no secret (providers scrub upstream text before it gets here)."""

    key: str
    outcome: ProbeOutcome
    detail: str = ""

    @classmethod
    def of_error(cls, key: str, err: ProviderError) -> ProbeResult:
        """A failed probe call, read like a failed request. A 429 that is not about quota means
        the upstream answered (and usually took the key): reachable, rate limited for now."""
        detail = f"{err.message} (HTTP {err.status})" if err.status else err.message
        if isinstance(err, RateLimited):
            wait = f", retry after {err.retry_after:.0f} s" if err.retry_after is not None else ""
            return cls(key, ProbeOutcome.REACHABLE, f"rate limited now: HTTP 429{wait}")
        outcome = ProbeOutcome.UNREACHABLE  # connection failures, 5xx, garbled answers
        if isinstance(err, AuthFailed):
            outcome = ProbeOutcome.AUTH_FAILED
        elif isinstance(err, QuotaExceeded):
            outcome = ProbeOutcome.QUOTA
        elif isinstance(err, ProviderTimeout):
            outcome = ProbeOutcome.TIMED_OUT
        elif isinstance(err, (Misconfigured, RequestRejected)):
            outcome = ProbeOutcome.MISCONFIGURED
        return cls(key, outcome, detail)

    def __str__(self) -> str:
        """`reachable (model gpt-4o-mini listed)`, `auth failed: Incorrect API key (HTTP 401)`."""
        detail = " ".join(self.detail.split())[:300]  # one line, whatever the upstream said
        if not detail:
            return str(self.outcome)
        if self.outcome is ProbeOutcome.REACHABLE:
            return f"{self.outcome} ({detail})"
        return f"{self.outcome}: {detail}"
