"""Slack request signing (v0): every Events API and interactivity request carries

    X-Slack-Request-Timestamp: <unix seconds>
    X-Slack-Signature: v0=hex(HMAC-SHA256(signing_secret, "v0:{timestamp}:{raw body}"))

The timestamp is checked first (5 minutes either way, against replays), then the HMAC over the
raw bytes exactly as received, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from proxy.errors import VerificationError
from proxy.verify import within_window

#: Slack's own tolerance (slack_sdk's SignatureVerifier uses the same 60 * 5 seconds).
REPLAY_WINDOW = 300


def signature(secret: str, timestamp: str, body: bytes) -> str:
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def verify_request(
    secret: str, headers: Mapping[str, str], body: bytes, window: int = REPLAY_WINDOW, now: float | None = None
) -> None:
    """Raise `VerificationError` unless the request is signed with `secret` within `window` s.

    `headers` have lower-case names. The reason goes to our log only, never to the caller.
    """
    timestamp = headers.get("x-slack-request-timestamp", "")
    given = headers.get("x-slack-signature", "")
    if not timestamp or not given:
        raise VerificationError("missing Slack signature headers")
    within_window(timestamp, window, what="Slack timestamp", now=now)
    expected = signature(secret, timestamp, body).encode()
    if not hmac.compare_digest(expected, given.encode("utf-8", "replace")):
        raise VerificationError("Slack signature mismatch")
