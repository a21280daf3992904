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
    │                      the core's failover decides (see `retryable`).
    ├── ProviderTimeout        connect/read timeout                      retryable
    ├── ProviderUnavailable    connection refused/reset, 5xx, 408, 409   retryable
    ├── RateLimited            429 (not quota)                           retryable, `retry_after`
    ├── QuotaExceeded          quota/billing exhausted (429 insufficient_quota, Dify
    │                          provider_quota_exceeded, rate_limit_error)  not retryable
    ├── AuthFailed             401/403 from the upstream                 not retryable
    ├── RequestRejected        the upstream refused this request (400/404/422)  not retryable
    ├── BadResponse            the upstream answered something we cannot parse  retryable
    ├── StreamInterrupted      the upstream failed after the first token reached the caller;
    │                          the core never switches provider then
    └── ChainFailed            every provider of a channel failed or was skipped; `attempts`
                               lists (provider, what happened) in chain order
"""

from __future__ import annotations


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

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.message, self.provider, self.status, self.retry_after = (
            message,
            provider,
            status,
            retry_after,
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


class RequestRejected(ProviderError):
    retryable = False


class BadResponse(ProviderError):
    retryable = True


class StreamInterrupted(ProviderError):
    retryable = False


def error_for_status(
    status: int,
    message: str,
    *,
    provider: str = "",
    code: str | None = None,
    retry_after: float | None = None,
) -> ProviderError:
    """Map an upstream HTTP status (and OpenAI-style error code) to the error tree."""
    quota_codes = {"insufficient_quota", "provider_quota_exceeded", "rate_limit_error"}
    cls: type[ProviderError]
    if code in quota_codes:
        cls = QuotaExceeded
    elif status == 429:
        cls = RateLimited
    elif status in (401, 403):
        cls = AuthFailed
    elif status in (408, 409) or status >= 500:
        cls = ProviderUnavailable
    else:
        cls = RequestRejected
    return cls(message, provider=provider, status=status, retry_after=retry_after)


class ChainFailed(ProviderError):
    """Every provider in a channel's chain failed, was skipped (open circuit) or is disabled."""

    def __init__(self, channel: str, attempts: list[tuple[str, str]], errors: list[ProviderError]) -> None:
        self.channel, self.attempts, self.errors = channel, attempts, errors
        tried = "; ".join(f"{p}: {what}" for p, what in attempts) or "no provider is enabled"
        super().__init__(f"every provider failed for channel {channel!r} ({tried})")

    @property
    def all_rejected(self) -> bool:
        """True when each provider refused the request itself (a caller error, not an outage)."""
        return bool(self.errors) and all(isinstance(e, RequestRejected) for e in self.errors)

    @property
    def nothing_tried(self) -> bool:
        return not self.errors
