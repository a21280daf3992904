"""Switchboard's one error tree.

SwitchboardError
├── ConfigError            a config file or value is wrong; names the path, what is wrong and
│                          what would be valid. Never shown as a traceback.
├── VerificationError      an inbound platform request failed its signature / token / replay
│                          check. Answered 401 (or `status`), nothing processed, details only
│                          in our log.
├── RequestError           a caller sent something malformed (bad JSON, missing field, too
│                          large). Answered 4xx with a message that names the problem.
├── OverLimit              a key, channel or user reached a configured limit (`limits:`);
│                          answered 429 + Retry-After, or once per window in chat. Nothing
│                          goes upstream.
└── ProviderError          an upstream backend failed. Providers raise these and never retry;
    │                      the core's failover decides (see `retryable` and `counts`).
    ├── ProviderTimeout        connect/read timeout                      retry, then fail over
    ├── ProviderUnavailable    connection refused/reset, 5xx, 408, 409   retry, then fail over
    ├── RateLimited            429 (not quota)                           retry (`retry_after`), fail over
    ├── QuotaExceeded          quota/billing exhausted                   fail over
    ├── AuthFailed             401/403: our key is wrong                 fail over
    ├── Misconfigured          another 4xx (404 unknown model or path, 405, 415...): our
    │                          config does not fit this upstream          fail over, no circuit
    ├── RequestRejected        the upstream says the *caller's request* is wrong (400, 413, 422,
    │                          context too long). The caller's error: no retry, no failover, no
    │                          circuit or key-health count; answered to the caller as a 4xx.
    │   └── ContextTooLong     the prompt, history included, is longer than the model takes
    ├── BadResponse            the upstream answered something we cannot parse  retry, fail over
    ├── StreamInterrupted      the upstream failed after the first token reached the caller;
    │                          the core never switches provider then
    └── ChainFailed            every provider of a channel failed or was skipped; `attempts`
                               lists (provider, what happened) in chain order

Which vendor code means what (OpenAI's `insufficient_quota`, Dify's `provider_quota_exceeded`)
is each provider's business: providers build these classes themselves, and `error_for_status`
maps by HTTP status alone.
"""

from __future__ import annotations

import math
from typing import Any


class SwitchboardError(Exception):
    """Base of every error Switchboard raises on purpose."""


class ConfigError(SwitchboardError):
    def __init__(self, path: str, problem: str, valid: str | None = None) -> None:
        self.path, self.problem, self.valid = path, problem, valid
        text = f"{path}: {problem}" if path else problem
        if valid:
            text += f" (valid: {valid})"
        super().__init__(text)


class StoreUnavailable(SwitchboardError):
    """The store does not answer (Redis down or unreachable). Requests that need it are answered
    503 (the OpenAI API) or with the platform's apology; nothing is lost that the caller or the
    platform cannot send again, and the store is tried again on the next request."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"the store is unavailable ({detail})")


class VerificationError(SwitchboardError):
    """Inbound request failed authentication. `reason` is for our log only, never the caller."""

    def __init__(self, reason: str, status: int = 401) -> None:
        self.reason, self.status = reason, status
        super().__init__(reason)


class RequestError(SwitchboardError):
    """The caller's request is malformed. The message is safe to show to the caller."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None) -> None:
        self.message, self.status, self.param, self.code = message, status, param, code
        super().__init__(message)


class OverLimit(SwitchboardError):
    """A configured limit is reached. `kind` is `rpm`, `tokens_per_day` or `concurrent`; `rule`
    the `proxy.limits.Rule` (its scope and name say whose); `who` the counter's owner (a user's
    id: for the store key only, never in metrics); `retry_after` the seconds until the window
    ends (1 for concurrency)."""

    CODES = {"rpm": "rate_limit_exceeded", "tokens_per_day": "tokens_per_day_exceeded",
             "concurrent": "concurrency_limit_exceeded"}  # fmt: skip

    def __init__(self, kind: str, rule: Any, who: str, limit: int, retry_after: float, window: float) -> None:
        self.kind, self.rule, self.who, self.limit = kind, rule, who, limit
        self.retry_after, self.window = retry_after, window
        super().__init__(self.describe())

    @property
    def code(self) -> str:
        return self.CODES[self.kind]

    def describe(self) -> str:
        whose = f"{self.rule.scope} '{self.rule.name}'"
        per = _per(self.window)
        if self.kind == "rpm":
            what = f"Rate limit reached for {whose}: {self.limit} requests {per}."
        elif self.kind == "tokens_per_day":
            what = f"Token budget used up for {whose}: {self.limit} tokens {per}."
        else:
            what = f"Concurrency limit reached for {whose}: {self.limit} generations at once."
        return f"{what} Try again in {wait_text(self.retry_after)}."


def wait_text(seconds: float) -> str:
    """`42 s`, `3 min`, `5 h`: how long until a window ends, for people."""
    if seconds < 90:
        return f"{max(1, math.ceil(seconds))} s"
    if seconds < 5400:
        return f"{math.ceil(seconds / 60)} min"
    return f"{math.ceil(seconds / 3600)} h"


def _per(window: float) -> str:
    named = {60.0: "per minute", 3600.0: "per hour", 86400.0: "per day"}
    return named.get(window, f"per {window:g} s")


class DeliveryError(SwitchboardError):
    """A platform did not take our reply. The message must not contain tokens or token URLs."""


class ProviderError(SwitchboardError):
    """An upstream failure. `message` must never contain a secret (keys, tokens)."""

    #: Worth trying the same provider again after a pause.
    retryable: bool = False
    #: A failure of the provider: counts toward its circuit (and the next provider is tried).
    counts: bool = True

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        status: int | None = None,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        self.message, self.provider, self.status, self.retry_after, self.code = (
            message,
            provider,
            status,
            retry_after,
            code,
        )
        super().__init__(message)

    def __str__(self) -> str:
        where = f"{self.provider}: " if self.provider else ""
        code = f" (HTTP {self.status})" if self.status else ""
        return f"{where}{self.message}{code}"


class ProviderTimeout(ProviderError):
    retryable = True


class ProviderUnavailable(ProviderError):
    retryable = True


class RateLimited(ProviderError):
    retryable = True


class QuotaExceeded(ProviderError):
    retryable = False


class AuthFailed(ProviderError):
    retryable = False


class Misconfigured(ProviderError):
    """Our request shape does not fit this upstream (unknown model or path, method, media type).
    The next provider may fit; the provider itself is up, so its circuit is not touched."""

    counts = False


class RequestRejected(ProviderError):
    """The upstream refused the caller's request itself (a bad parameter, too long a context).
    Returned to the caller as it is; never retried, never failed over, never counted against
    the provider or its key. `param` names the offending field when the upstream said so."""

    counts = False

    def __init__(self, message: str, *, param: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.param = param


class BadResponse(ProviderError):
    retryable = True


class StreamInterrupted(ProviderError):
    retryable = False


class ContextTooLong(RequestRejected):
    """The prompt, history included, is longer than the model takes (each provider recognises its
    vendor's way of saying so). A chat user can fix it with /clear."""


#: Statuses by which an upstream says the request itself is wrong.
CALLER_STATUSES = frozenset({400, 413, 422})


def error_for_status(
    status: int,
    message: str,
    *,
    provider: str = "",
    code: str | None = None,
    param: str | None = None,
    retry_after: float | None = None,
) -> ProviderError:
    """Map an upstream HTTP status to the error tree, by the status alone. A provider reads its
    vendor's codes (quota, "the backend failed" codes sent with a 400) before calling this."""
    if status in CALLER_STATUSES:
        return RequestRejected(message, provider=provider, status=status, code=code, param=param)
    cls: type[ProviderError]
    if status == 429:
        cls = RateLimited
    elif status in (401, 403):
        cls = AuthFailed
    elif status in (408, 409) or status >= 500:
        cls = ProviderUnavailable
    else:
        cls = Misconfigured
    return cls(message, provider=provider, status=status, retry_after=retry_after, code=code)


class ChainFailed(ProviderError):
    """Every provider in a channel's chain failed, was skipped (open circuit) or is disabled."""

    def __init__(self, channel: str, attempts: list[tuple[str, str]], errors: list[ProviderError]) -> None:
        self.channel, self.attempts, self.errors = channel, attempts, errors
        tried = "; ".join(f"{p}: {what}" for p, what in attempts) or "no provider is enabled"
        super().__init__(f"every provider failed for channel {channel!r} ({tried})")

    @property
    def nothing_tried(self) -> bool:
        return not self.errors
