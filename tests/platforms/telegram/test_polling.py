"""Telegram long polling through the real app: every update answered exactly once across a
failed poll, a connection dropped while answers stream (the updates it carried lost on the
way), a restart that reads unconfirmed updates again, a restart in the middle of an answer (the
next process finishes it in the message already sent), and an update that could not be claimed
left unconfirmed for the next connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import pytest

from platforms.telegram import TelegramPlatform
from proxy.config import parse_config
from proxy.errors import StoreUnavailable
from proxy.types import Inbound
from tests.platforms.fake_ctx import FakeCtx
from tests.platforms.telegram.fake_bot_api import TOKEN, FakeBotAPI, update
from tests.platforms.telegram.telegram_kit import answered, config, hook, running

POLLING = {"mode": "polling", "secret_token": None}


@pytest.fixture
async def api():
    async with FakeBotAPI() as fake:
        yield fake


async def test_polling_answers_each_update_once_across_a_failed_poll(tmp_path, api, caplog):
    caplog.set_level(logging.DEBUG)
    async with running(tmp_path, api, **POLLING) as c:
        api.push(update("first"), update("second"))
        await answered(api, 2, "echo: second")
        api.fail("getUpdates", status=502)
        api.push(update("third"))
        said = await answered(api, 3, "echo: third")
        assert (await hook(c, update("by webhook"))).status_code == 403  # polling: no webhook taken
    assert sorted(said) == ["echo: first", "echo: second", "echo: third"]
    assert api.of("deleteWebhook")  # getUpdates needs the webhook gone
    assert "getUpdates: 502" in caplog.text  # the reconnect is logged, the token in the URL never
    assert TOKEN not in caplog.text and "/bot" not in caplog.text


async def test_a_connection_dropped_while_answers_stream_loses_nothing_and_repeats_nothing(tmp_path, api):
    async with running(tmp_path, api, delay=0.05, **POLLING) as c:
        api.push(update("one two three four five six"), update("seven eight nine ten eleven"))
        await api.wait(lambda: any(t.endswith(" …") for t in api.texts.values()))  # answers streaming
        api.drop(2)  # the poll in progress, and the first one after the reconnect
        api.push(update("carried by a dropped poll"))
        said = await answered(api, 3, "echo: carried by a dropped poll")
        ready = (await c.get("/readyz")).json()
    assert sorted(said) == [
        "echo: carried by a dropped poll",
        "echo: one two three four five six",
        "echo: seven eight nine ten eleven",
    ]
    assert len(api.of("sendMessage")) == 3
    assert ready["connections"]["tg"]["reconnects"] == 2
    assert ready["connections"]["tg"]["state"] == "connected"


async def test_a_restart_reading_unconfirmed_updates_answers_them_once(tmp_path, api):
    first = update("before the restart")
    async with running(tmp_path, api, **POLLING):
        api.push(first)
        await answered(api, 1, "echo: before the restart")
    api.push(first)  # as Telegram does when the confirming getUpdates never came
    async with running(tmp_path, api, **POLLING):
        api.push(update("after"))
        said = await answered(api, 2, "echo: after")
    assert said == ["echo: before the restart", "echo: after"]


async def test_a_restart_in_the_middle_of_an_answer_finishes_it_in_the_same_message(tmp_path, api):
    slow = update("slow words arrive here")
    async with running(tmp_path, api, delay=1.0, server={"drain_seconds": 0}, **POLLING):
        api.push(slow)
        await api.wait(lambda: any(t.startswith("echo:") for t in api.texts.values()))  # mid-answer
    [cut_off] = api.texts.values()
    assert cut_off.endswith(" …")
    api.push(slow)  # and Telegram sends it again, unconfirmed
    async with running(tmp_path, api, **POLLING):
        said = await answered(api, 1, "echo: slow words arrive here")
    assert said == ["echo: slow words arrive here"]
    assert len(api.of("sendMessage")) == 1  # the placeholder of the first process, edited by the second


class StoreDownOnce(FakeCtx):
    """A context whose first `accept` fails, as the core's does while the store is unreachable."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def accept(self, platform: Any, msg: Inbound) -> Inbound | None:
        if self.down:
            self.down = False
            raise StoreUnavailable("the store is unreachable")
        return await super().accept(platform, msg)


async def test_an_update_that_could_not_be_claimed_is_not_confirmed_and_is_read_again(tmp_path, api):
    block = parse_config(config(tmp_path, api, **POLLING), {}).platforms["tg"].config
    ctx = StoreDownOnce()
    u = update("claimed the second time")
    api.push(u)
    async with aiohttp.ClientSession() as http:
        ctx.http = http  # type: ignore[attr-defined]
        tg = TelegramPlatform("tg", block, ctx)  # type: ignore[arg-type]
        with pytest.raises(StoreUnavailable):  # the connection ends; the supervisor makes it again
            await tg.connection(lambda: None)
        again = asyncio.create_task(tg.connection(lambda: None))
        await api.wait(lambda: bool(ctx.submitted) and not api.pending)  # submitted, then confirmed
        again.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await again
    assert [m.text for m in ctx.submitted] == ["claimed the second time"]
    assert api.pending == []


async def test_check_live_finds_the_polling_connection_up_at_once(tmp_path, api):
    """The first poll does not wait, so `switchboard check --live` sees the connection up at once
    (a quiet bot's long poll would outlast the check), and reads no update."""
    import argparse
    import io

    import yaml

    from proxy.cli import check

    api.longest_poll = 60.0  # as Telegram holds a long poll when nothing arrives
    path = tmp_path / "c.yaml"
    cfg = config(tmp_path, api, poll_timeout=50, **POLLING)
    path.write_text(yaml.safe_dump({**cfg, "store": {"url": "memory://"}}))
    out = io.StringIO()
    code = await asyncio.to_thread(check, argparse.Namespace(config=str(path), live=True), out)
    report = out.getvalue().split("platform connections, live")[1].split()
    assert code == 0, out.getvalue()
    assert report[report.index("tg") + 1] == "connected"
    assert [c["timeout"] for c in api.of("getUpdates")] == [0]
