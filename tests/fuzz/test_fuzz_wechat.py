"""WeChat Official Account, plaintext and safe mode, with valid signatures (and in safe mode a
valid msg_signature over the mutated XML, encrypted): XML variants — declarations naming any
encoding, BOMs, DTDs, nesting, odd roots, control characters — never get a 5xx, and nothing is
stored or started for a refused request."""

from __future__ import annotations

from xml.sax.saxutils import escape

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.rig import ECHO_ONLY, FUZZ, ODD_STRINGS, Rig
from tests.platforms.wechat_mp.wechat_kit import (
    AES_KEY,
    APP_ID,
    OPENID,
    TOKEN,
    FakeWeChatAPI,
    fields,
    payload,
    safe_body,
    signed_query,
)

ENCODINGS = ["utf-8", "UTF-8", "utf-16", "gbk", "latin-1", "ascii", "bogus", "hex", "rot13", "base64", "zlib"]
ENCODINGS += ["uu", "utf-32", "idna", "punycode", "mbcs", "utf-8-sig", "unicode_escape", "undefined"]
RECORDED = ["text", "image", "voice", "location", "link", "subscribe", "unsubscribe"]
values = st.one_of(
    st.text(max_size=12),
    st.sampled_from([*ODD_STRINGS, "]]>", "<b>x</b>", "&amp;", "1", "event", "text", "subscribe", "-5"]),
    st.integers().map(str),
)


@st.composite
def xml_docs(draw: st.DrawFn) -> bytes:
    """A recorded message as XML again, its fields changed, dropped, repeated or nested, its
    root, declaration, DTD and encoding varied."""
    f = fields(payload(draw(st.sampled_from(RECORDED))))
    if "MsgId" in f:
        f["MsgId"] = str(draw(st.integers(0, 10**18)))  # a new message: dedupe does not end it
    items = list(f.items())
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["set", "set", "drop", "repeat", "nest"]))
        tag = draw(st.sampled_from([*f, "Encrypt", "Event"]))
        if op == "drop":
            items = [(k, v) for k, v in items if k != tag]
        elif op == "nest":
            items.append((tag, f"<Inner>{escape(draw(values))}</Inner>"))
        else:
            items = [(k, v) for k, v in items if k != tag or op == "repeat"] + [(tag, escape(draw(values)))]
    cdata = draw(st.booleans())
    body = "".join(
        f"<{k}>{v}</{k}>" if v.startswith("<Inner>") or not cdata else f"<{k}><![CDATA[{v}]]></{k}>" for k, v in items
    )
    root = draw(st.sampled_from(["xml"] * 9 + ["XML", "root", "xml xmlns='urn:x'"]))
    xml = f"<{root}>{body}</{root.split()[0]}>"
    encoding = draw(st.sampled_from([None] * len(ENCODINGS) + ENCODINGS))
    if encoding is not None:
        xml = f'<?xml version="1.0" encoding="{encoding}"?>' + xml
    if draw(st.sampled_from([False] * 9 + [True])):
        xml = '<!DOCTYPE xml [<!ENTITY e "x">]>' + xml
    raw = xml.encode("utf-8")
    if encoding in ("utf-16", "gbk", "latin-1") and draw(st.booleans()):
        raw = xml.encode(encoding, errors="replace")  # really in the declared encoding
    return draw(st.sampled_from([raw] * 10 + [b"\xef\xbb\xbf" + raw, raw[: len(raw) // 2], raw + b"\xff"]))


@pytest.fixture
async def rig():
    async with FakeWeChatAPI() as api:
        common = {"kind": "wechat_mp", "token": TOKEN, "api_base": api.base_url, "reply_wait": 0.5, "hold_max": 0.3}
        config = {
            **ECHO_ONLY,
            "platforms": {"wx": common, "wxs": {**common, "app_id": APP_ID, "encoding_aes_key": AES_KEY}},
        }
        async with Rig(config).running() as r:
            yield r
            query = signed_query(openid=OPENID)
            # MsgIds no fuzzed document carries (a fuzzed "1" was answered as an image before)
            plain = await r.send("/hooks/wx", payload("text", MsgId="after-fuzz-1"), {}, **query)
            assert plain.status_code == 200 and b"echo: hello there" in plain.content
            body, safe_query = safe_body(payload("text", MsgId="after-fuzz-2"), query)
            assert (await r.send("/hooks/wxs", body, {}, **safe_query)).status_code == 200


@FUZZ
@given(xml=xml_docs())
async def test_plaintext_mode(rig: Rig, xml: bytes):
    r = await rig.send("/hooks/wx", xml, {"content-type": "text/xml"}, **signed_query(openid=OPENID))
    assert r.status_code in (200, 400)


@FUZZ
@given(xml=xml_docs(), outer=st.sampled_from([None] * len(ENCODINGS) + ENCODINGS))
async def test_safe_mode_inner_and_outer(rig: Rig, xml: bytes, outer: str | None):
    body, query = safe_body(xml, signed_query(openid=OPENID))  # valid msg_signature over the Encrypt value
    if outer is not None:
        body = f'<?xml version="1.0" encoding="{outer}"?>'.encode() + body
    r = await rig.send("/hooks/wxs", body, {"content-type": "text/xml"}, **query)
    assert r.status_code in (200, 400)
