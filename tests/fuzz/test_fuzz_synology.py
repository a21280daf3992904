"""Synology Chat with a valid token over wrongly shaped forms: never a 5xx, nothing stored or
started for a refused request, and what is acknowledged is delivered without an error."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.rig import ECHO_ONLY, FUZZ, HUGE, ODD_STRINGS, Rig
from tests.platforms.synology.synology_kit import BOT_TOKEN, HOOK_TOKEN, FakeNAS, form

FORM = {"content-type": "application/x-www-form-urlencoded"}
#: The ids (which address the reply) are drawn more often than the rest.
FIELDS = (
    ["user_id"] * 3 + ["channel_id"] * 2 + ["username", "post_id", "timestamp", "text", "channel_name", "trigger_word"]
)
values = st.one_of(
    st.text(max_size=12),
    st.sampled_from(ODD_STRINGS),
    st.sampled_from([str(n) for n in HUGE]),
    st.integers(min_value=2**60, max_value=2**80).map(str),  # around the 64-bit edge
    st.integers().map(str),
    st.sampled_from(["٤", "+4", " 4", "4 ", "0x10", "4.0", "1e3", "python: import os", "BASH：ls"]),
)


@st.composite
def forms(draw: st.DrawFn) -> bytes:
    """A recorded form (valid token kept) with fields changed, dropped, repeated or added, in
    UTF-8 as a rule and sometimes not."""
    name = draw(st.sampled_from(["bot_dm", "bot_dm", "outgoing_webhook"]))
    fields = {k: v[0] for k, v in parse_qs(form(name).decode(), keep_blank_values=True).items()}
    fields["post_id"] = str(draw(st.integers(0, 10**12)))  # a new post: dedupe does not end it
    pairs = list(fields.items())
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "set", "drop", "repeat"]))
        key = draw(st.sampled_from(FIELDS))
        pairs = [(k, v) for k, v in pairs if k != key or op == "repeat"]
        if op != "drop":
            pairs.append((key, draw(values)))
    body = urlencode(pairs).encode()
    return draw(st.sampled_from([body] * 8 + [body + b"&%ff=%fe", body + b"&token=another", b"\xff" + body]))


@pytest.fixture
async def nas():
    async with FakeNAS() as fake:
        yield fake


@pytest.fixture
async def rig(nas: FakeNAS):
    config = {
        **ECHO_ONLY,
        "platforms": {
            "nas": {
                "kind": "synology",
                "tokens": [BOT_TOKEN, HOOK_TOKEN],
                "api_base": nas.base,
                "bot_token": BOT_TOKEN,
                "incoming_url": nas.base + "/incoming/default",
                "send_interval": 0,
            }
        },
    }
    async with Rig(config).running() as r:
        yield r
        before = len(nas.sent)
        assert (await r.send("/hooks/nas", form("bot_dm", post_id="99999999999999"), FORM)).status_code == 200
        assert len(nas.sent) == before + 1  # answered


@FUZZ
@given(body=forms())
async def test_wrongly_shaped_forms(rig: Rig, body: bytes):
    r = await rig.send("/hooks/nas", body, FORM)
    assert r.status_code in (200, 400)
