"""Verification is structural: the core's `Platform.handle` runs the adapter's `verify` before its
`receive`, an adapter without `verify` cannot be built, and every adapter's replay window is the
one shared helper."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.contracts import AdapterConfig, Answer, Platform
from proxy.errors import VerificationError
from proxy.types import Inbound, WebRequest, WebResponse
from proxy.verify import within_window

REQ = WebRequest("POST", "/hooks/x", {}, {}, b"{}")


class Recording(Platform):
    config_model = AdapterConfig

    def __init__(self, fail: bool) -> None:
        super().__init__("x", None, None)  # type: ignore[arg-type]
        self.fail, self.received = fail, 0

    def verify(self, request: WebRequest) -> None:
        if self.fail:
            raise VerificationError("bad signature")

    async def receive(self, request: WebRequest) -> WebResponse:
        self.received += 1
        return WebResponse(200, b"ok")

    async def deliver(self, msg: Inbound, answer: Answer) -> None:
        return None


async def test_handle_verifies_before_it_receives():
    good, bad = Recording(fail=False), Recording(fail=True)
    assert (await good.handle(REQ)).body == b"ok" and good.received == 1
    with pytest.raises(VerificationError):
        await bad.handle(REQ)
    assert bad.received == 0


def test_an_adapter_without_verify_cannot_be_built():
    class Forgetful(Platform):
        config_model = AdapterConfig

        async def receive(self, request: WebRequest) -> WebResponse:
            return WebResponse()

        async def deliver(self, msg: Inbound, answer: Answer) -> None:
            return None

    with pytest.raises(TypeError, match="verify"):
        Forgetful("x", None, None)  # type: ignore[abstract, arg-type]


@pytest.mark.parametrize(
    ("timestamp", "kw", "ok"),
    [
        ("1000", {}, True),
        ("1300", {}, True),
        ("1301", {}, False),
        ("699", {}, False),
        ("10xx", {}, False),
        ("", {}, False),
        ("-5", {}, False),
        ("1000500", {"unit": 0.001}, True),  # milliseconds
        ("1300001", {"unit": 0.001}, False),
    ],
)
def test_the_replay_window(timestamp: str, kw: dict[str, Any], ok: bool):
    window = 300_000 if kw.get("unit") else 300
    if ok:
        within_window(timestamp, window, now=1000.0, **kw)
    else:
        with pytest.raises(VerificationError):
            within_window(timestamp, window, now=1000.0, **kw)


async def test_submit_takes_only_a_claimed_message_and_accept_dedupes():
    """Dedupe is structural too: `ctx.submit` refuses a message whose event id this context did
    not claim; `ctx.accept` (what adapters use) claims every key, then submits."""
    from proxy.app import create_app
    from proxy.config import parse_config

    app = create_app(
        parse_config(
            {
                "store": {"url": "memory://"},
                "providers": {"echo": {"kind": "echo"}},
                "channels": [{"name": "c", "providers": ["echo"]}],
            },
            {},
        )
    )
    async with app.router.lifespan_context(app):
        ctx = app.state.hooks.dispatcher.context("x")
        msg = Inbound("x", "ev-1", "chat", "user", "hi", extra_keys=("chat:1",))
        with pytest.raises(RuntimeError, match="without a claim"):
            ctx.submit(Recording(fail=False), msg)
        assert await ctx.accept(Recording(fail=False), msg) is not None
        assert await ctx.accept(Recording(fail=False), msg) is None  # the same message again
        again = Inbound("x", "ev-2", "chat", "user", "hi", extra_keys=("chat:1",))  # another event, same message
        assert await ctx.accept(Recording(fail=False), again) is None
