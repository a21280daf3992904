"""Requests the OpenAI front door refuses (4xx): counted in `/metrics` and logged, sparingly.

A client with a wrong key, or a scanner, can send thousands of refused requests a second; one
log line each would drown the log and cost more than the refusal itself. So each status is
logged at most once per `interval` (10 s), and that line says how many more of that status were
refused since the previous line. The counter in `/metrics` counts every one. Only the status, our
reason code and the offending field's name are logged: never the key, the body or the caller's
text. Refused ones after a status's last line are reported with its next line (or only counted,
if none comes).

Called on the refusal paths only: a request that is answered never reaches this module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from proxy.metrics import Metrics

log = logging.getLogger("switchboard.openai")

#: The reason of an upstream's refusal of the caller's request (RequestRejected).
UPSTREAM = "upstream_rejected"


class Refusals:
    def __init__(self, metrics: Metrics, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.interval = interval
        self.clock = clock
        # per status: when it was last logged, and how many were refused since without a line
        self._last: dict[int, float] = {}
        self._quiet: dict[int, int] = {}

    def __call__(self, status: int, reason: str | None, param: str | None = None) -> None:
        reason = reason or "invalid_request"
        self.metrics.count_refused(status, reason)
        now = self.clock()
        last = self._last.get(status)
        if last is not None and now - last < self.interval:
            self._quiet[status] = self._quiet.get(status, 0) + 1
            return
        self._last[status] = now
        quiet = self._quiet.pop(status, 0)
        if not log.isEnabledFor(logging.INFO):
            return
        where = f" param={param[:64]!r}" if param else ""
        more = f"; {quiet} more refused with {status} since the last such line" if quiet else ""
        log.info("refused status=%d reason=%s%s%s", status, reason, where, more)
