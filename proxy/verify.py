"""What every webhook's verification shares: the replay window on a request's timestamp.

A signature proves who sent a request, not when: a captured request could be sent again later.
Each platform signs a timestamp with the request; `within_window` refuses one that is not a plain
number or lies further than `window` from now (either way: clocks drift), before the signature is
even computed. `unit` is the timestamp's unit in seconds (1 for seconds, 0.001 for DingTalk's
milliseconds).
"""

from __future__ import annotations

import time

from proxy.errors import VerificationError


def within_window(
    timestamp: str,
    window: float,
    *,
    unit: float = 1.0,
    what: str = "timestamp",
    status: int = 401,
    now: float | None = None,
) -> None:
    """Raise `VerificationError` (with `status`) unless `timestamp` is digits within `window`
    (in the timestamp's own unit) of now."""
    if not (timestamp.isascii() and timestamp.isdigit() and 0 < len(timestamp) <= 16):
        raise VerificationError(f"{what} is not a whole number", status)
    clock = time.time() if now is None else now
    if abs(clock - int(timestamp) * unit) > window * unit:
        raise VerificationError(f"{what} is outside the {window:g} replay window", status)
