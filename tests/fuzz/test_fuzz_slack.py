"""Slack with valid v0 signatures over structurally wrong Events API and interactivity bodies:
never a 5xx, nothing stored or started for a refused request, and the app still answers."""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.rig import ECHO_ONLY, FUZZ, Rig, body_of, json_bytes, mutated
from tests.platforms.slack.fake_slack import FakeSlack
from tests.platforms.slack.slack_kit import FORM, PAYLOADS, SECRET, TOKEN, payload, sign

EVENTS = [payload("message_im"), payload("app_mention_channel"), payload("url_verification")]
SHORTCUT = orjson.loads((PAYLOADS / "shortcut_stop.json").read_bytes())


def fresh(doc: dict[str, Any], n: int) -> dict[str, Any]:
    """The event under new ids, so dedupe does not stop the examples that follow at the door."""
    doc = copy.deepcopy(doc)
    if "event_id" in doc:
        doc["event_id"] = f"Ev{n:010d}"
        doc["event"]["ts"] = f"1700000000.{n:06d}"
    return doc


events = st.tuples(st.sampled_from(EVENTS), st.integers(0, 10**9)).map(lambda t: fresh(*t)).flatmap(body_of)
shortcuts = (
    mutated(SHORTCUT).flatmap(json_bytes).map(lambda b: urlencode({"payload": b.decode("utf-8", "replace")}).encode())
)


@pytest.fixture
async def rig():
    async with FakeSlack() as slack:
        config = {
            **ECHO_ONLY,
            "platforms": {
                "slack": {
                    "kind": "slack",
                    "signing_secret": SECRET,
                    "bot_token": TOKEN,
                    "api_base": slack.base_url,
                    "update_interval": 0,
                }
            },
        }
        async with Rig(config).running() as r:
            yield r
            body = orjson.dumps(fresh(EVENTS[0], 10**10))
            before = len(slack.of("chat.postMessage"))
            assert (
                await r.send("/hooks/slack", body, {**sign(body), "content-type": "application/json"})
            ).status_code == 200
            assert len(slack.of("chat.postMessage")) == before + 1  # answered


@FUZZ
@given(body=events)
async def test_wrongly_shaped_events(rig: Rig, body: bytes):
    r = await rig.send("/hooks/slack", body, {**sign(body), "content-type": "application/json"})
    assert r.status_code in (200, 400)


@FUZZ
@given(body=shortcuts)
async def test_wrongly_shaped_shortcuts(rig: Rig, body: bytes):
    r = await rig.send("/hooks/slack", body, {**sign(body), "content-type": FORM})
    assert r.status_code in (200, 400)
