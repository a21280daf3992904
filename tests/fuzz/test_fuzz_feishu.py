"""Feishu / Lark with valid credentials over structurally wrong events: signed and encrypted
(the mutated event is what gets encrypted, or the envelope itself is mutated) and in token
mode. Never a 5xx; nothing stored or started for a refused request. (A mutation may hit the
verification token inside the event: that is a 401, as it should be.)"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.rig import ECHO_ONLY, FUZZ, Rig, body_of, json_bytes, mutated
from tests.platforms.feishu.feishu_kit import (
    APP_ID,
    APP_SECRET,
    KEY,
    TOKEN,
    FakeFeishu,
    lark_encrypt,
    lark_headers,
    payload,
)

EVENTS = [payload(n) for n in ("text_p2p", "text_group_mention", "post_group", "image_p2p", "chat_updated")]
EVENTS.append(payload("url_verification"))


def fresh(event: dict[str, Any], n: int) -> dict[str, Any]:
    """The event under new ids, so dedupe does not stop the examples that follow at the door."""
    event = copy.deepcopy(event)
    if "header" in event:
        event["header"]["event_id"] = f"ev{n:012d}"
    if "message" in event.get("event", {}):
        event["event"]["message"]["message_id"] = f"om_{n:012d}"
    return event


events = st.tuples(st.sampled_from(EVENTS), st.integers(0, 10**9)).map(lambda t: fresh(*t))


@st.composite
def encrypted(draw: st.DrawFn) -> bytes:
    """`{"encrypt": ...}` around a mutated event, or a mutated envelope around a whole one."""
    inner = draw(events.flatmap(body_of))
    envelope: Any = {"encrypt": lark_encrypt(KEY, inner)}
    if draw(st.sampled_from([False] * 4 + [True])):
        envelope = draw(mutated(envelope))
    return draw(json_bytes(envelope))


@pytest.fixture
async def rig():
    async with FakeFeishu() as api:
        common = {"kind": "feishu", "app_id": APP_ID, "app_secret": APP_SECRET, "verification_token": TOKEN}
        common |= {"api_base": api.base, "stream": False}
        config = {
            **ECHO_ONLY,
            "platforms": {"lark": {**common, "encrypt_key": KEY}, "larkt": common},
        }
        async with Rig(config).running() as r:
            yield r
            before = len(api.replies)
            body = orjson.dumps({"encrypt": lark_encrypt(KEY, orjson.dumps(fresh(EVENTS[0], 10**11)))})
            assert (await r.send("/hooks/lark", body, lark_headers(body))).status_code == 200
            body = orjson.dumps(fresh(EVENTS[0], 10**11 + 1))
            assert (await r.send("/hooks/larkt", body, {"content-type": "application/json"})).status_code == 200
            assert len(api.replies) == before + 2  # both answered


@FUZZ
@given(body=encrypted())
async def test_signed_encrypted_events(rig: Rig, body: bytes):
    r = await rig.send("/hooks/lark", body, lark_headers(body))
    assert r.status_code in (200, 400, 401)


@FUZZ
@given(body=events.flatmap(body_of))
async def test_token_mode_events(rig: Rig, body: bytes):
    r = await rig.send("/hooks/larkt", body, {"content-type": "application/json"})
    assert r.status_code in (200, 400, 401)
