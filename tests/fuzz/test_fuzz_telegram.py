"""Telegram webhooks with the right secret token over wrongly shaped Updates: never a 5xx,
nothing stored or started for a refused request, and the app still answers."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.rig import ECHO_ONLY, FUZZ, Rig, body_of
from tests.platforms.telegram.fake_bot_api import BOT_NAME, TOKEN, FakeBotAPI, mention, update

SECRET = {"X-Telegram-Bot-Api-Secret-Token": "fuzz-secret", "content-type": "application/json"}


def base(kind: str, n: int) -> dict[str, Any]:
    if kind == "group":
        return update(f"@{BOT_NAME} hi", chat=-100, kind="supergroup", entities=mention(), update_id=n)
    if kind == "photo":
        return update(None, photo=[{"file_id": "f", "width": 1, "height": 1}], update_id=n)
    return update("hello", update_id=n)


@pytest.fixture
async def api():
    async with FakeBotAPI() as fake:
        yield fake


@pytest.fixture
async def rig(api: FakeBotAPI):
    tg = {
        "kind": "telegram",
        "bot_token": TOKEN,
        "api_base": api.base_url,
        "secret_token": "fuzz-secret",
        "update_interval": 0,
    }
    async with Rig({**ECHO_ONLY, "platforms": {"tg": tg}}).running() as r:
        yield r
        before = len(api.of("sendMessage"))
        assert (await r.send("/hooks/tg", orjson.dumps(base("private", 10**12)), SECRET)).status_code == 200
        assert len(api.of("sendMessage")) == before + 1  # answered


@FUZZ
@given(data=st.data())
async def test_wrongly_shaped_updates(rig: Rig, data: st.DataObject):
    kind = data.draw(st.sampled_from(["private", "group", "photo"]))
    body = data.draw(body_of(base(kind, data.draw(st.integers(0, 10**9)))))
    r = await rig.send("/hooks/tg", body, SECRET)
    assert r.status_code in (200, 400)
