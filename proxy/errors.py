"""Switchboard's one error tree.

SwitchboardError
├── ConfigError            a config file or value is wrong; names the path, what is wrong and
│                          what would be valid. Never shown as a traceback.
├── VerificationError      an inbound platform request failed its signature / token / replay
│                          check. Answered 401 (or `status`), nothing processed, details only
│                          in our log.
├── RequestError           a caller sent something malformed (bad JSON, missing field, too
│                          large). Answered 4xx with a message that names the problem.
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
