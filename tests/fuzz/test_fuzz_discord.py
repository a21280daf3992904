"""Discord interactions signed with the app's key over wrongly shaped bodies: never a 5xx,
nothing stored or started for a refused request, and the app still answers `/ask`."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from tests.fuzz.rig import ECHO_ONLY, FUZZ, Rig, body_of
from tests.platforms.discord.fake_discord import APP, TOKEN, FakeDiscord

SIGNER = SigningKey(bytes(range(32)))


def signed(body: bytes) -> dict[str, str]:
    stamp = str(int(time.time()))
    signature = SIGNER.sign(stamp.encode() + body).signature.hex()
    return {"X-Signature-Ed25519": signature, "X-Signature-Timestamp": stamp, "content-type": "application/json"}


def ask(n: int) -> dict[str, Any]:
    return {
        "type": 2, "id": str(n), "application_id": APP, "token": f"tok{n}", "channel_id": "4000", "guild_id": "5000",
        "member": {"user": {"id": "2100", "username": "ana"}},
        "data": {"name": "ask", "type": 1, "options": [{"name": "question", "type": 3, "value": "hi"}]},
    }  # fmt: skip


@pytest.fixture
async def fake():
    async with FakeDiscord() as f:
        yield f


@pytest.fixture
async def rig(fake: FakeDiscord):
    dc = {"kind": "discord", "bot_token": TOKEN, "application_id": APP, "api_base": fake.api, "gateway": False,
          "public_key": SIGNER.verify_key.encode().hex(), "update_interval": 0}  # fmt: skip
    async with Rig({**ECHO_ONLY, "platforms": {"dc": dc}}).running() as r:
        yield r
        body = orjson.dumps(ask(10**12))
        assert (await r.send("/hooks/dc", body, signed(body))).status_code == 200
        assert fake.texts.get(f"@original:tok{10**12}") == "echo: hi"  # answered


@FUZZ
@given(data=st.data())
async def test_wrongly_shaped_interactions(rig: Rig, data: st.DataObject):
    doc = data.draw(st.sampled_from([ask(data.draw(st.integers(0, 10**9))), {"type": 1}]))
    body = data.draw(body_of(doc))
    r = await rig.send("/hooks/dc", body, signed(body))
    assert r.status_code in (200, 400)
