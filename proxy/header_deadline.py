"""A deadline for request headers, which uvicorn does not have (the slow-loris guard).

uvicorn's `timeout_keep_alive` only closes a connection that is idle *between* requests, and
every byte received cancels it, so a client that trickles a request line and headers a byte at a
time keeps its connection (and a file descriptor) as long as it likes; ASGI cannot help, the app
is called only once the headers are complete. So `serve` runs uvicorn with its HTTP protocol
class (httptools, else h11) subclassed here: when a connection opens, and again when a response
has ended (keep-alive), one timer is armed; if no new request has started when it fires, the
client gets a 408 and the connection is closed. That is one `call_later` per connection and per
response, next to uvicorn's own keep-alive timer, and nothing on the request path. Bodies have
their own deadline where they are read (`http_util.read_body`), so a slow body gets a 408 in the
dialect of its endpoint.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("switchboard")

_MESSAGE = b"Request headers were not received in time.\n"
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_MESSAGE), _MESSAGE)
)


class _HeaderDeadline(asyncio.Protocol):
    """Mixed in before uvicorn's HttpToolsProtocol / H11Protocol (which provide `loop`,
    `transport`, `cycle`, `client` and the hooks extended here)."""

    header_timeout: float = 10.0
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any
    client: Any
    _deadline: asyncio.TimerHandle | None = None
    _armed_for: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, *args: Any) -> None:
        self._disarm()  # the connection belongs to another protocol now
        super().handle_websocket_upgrade(*args)  # type: ignore[misc]

    def _arm(self) -> None:
        self._disarm()
        self._armed_for = self.cycle  # the request before the one whose headers we wait for
        self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if cycle is not self._armed_for or (cycle is not None and not cycle.response_complete):
            return  # a request arrived (or a pipelined one is being answered: it re-arms when done)
        if self.transport.is_closing():
            return
        log.debug("closing a connection from %s: no request headers within %gs", self.client, self.header_timeout)
        self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()


def with_header_deadline(seconds: float, base: type[asyncio.Protocol] | None = None) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (`base`, default: the one `http="auto"` picks) with a
    deadline of `seconds` for each request's headers; pass it as uvicorn's `http=`."""
    if base is None:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol

        base = AutoHTTPProtocol
    return type(f"HeaderDeadline{base.__name__}", (_HeaderDeadline, base), {"header_timeout": seconds})
