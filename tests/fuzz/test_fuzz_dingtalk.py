"""DingTalk with a valid timestamp + sign over structurally wrong callback bodies: never a 5xx,
nothing stored or started for a refused request, and the app still answers."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.rig import ECHO_ONLY, FUZZ, Rig, body_of
from tests.platforms.dingtalk.dingtalk_kit import SECRET, FakeWebhook, payload, signed_headers


def base(hook: FakeWebhook, name: str, n: int) -> dict[str, Any]:
    """A recorded callback under a new msgId whose sessionWebhook is the loopback fake."""
    return payload(name, msgId=f"msg{n:010d}", sessionWebhook=hook.url)


@pytest.fixture
async def hook():
    async with FakeWebhook() as fake:
        yield fake


@pytest.fixture
async def rig(hook: FakeWebhook):
    config = {
        **ECHO_ONLY,
        "platforms": {
            "ding": {"kind": "dingtalk", "app_secret": SECRET, "allow_insecure_webhook_hosts": ["127.0.0.1"]}
        },
    }
    async with Rig(config).running() as r:
        yield r
        before = len(hook.posts)
        body = orjson.dumps(base(hook, "text_direct", 10**10))
        assert (await r.send("/hooks/ding", body, signed_headers())).status_code == 200
        assert len(hook.posts) == before + 1  # answered


@FUZZ
@given(data=st.data())
async def test_wrongly_shaped_callbacks(rig: Rig, hook: FakeWebhook, data: st.DataObject):
    name = data.draw(st.sampled_from(["text_direct", "text_group", "rich_text", "picture"]))
    body = data.draw(body_of(base(hook, name, data.draw(st.integers(0, 10**9)))))
    r = await rig.send("/hooks/ding", body, signed_headers())
    assert r.status_code in (200, 400)
