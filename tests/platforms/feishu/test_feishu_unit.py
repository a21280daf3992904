"""Feishu adapter on recorded payloads with a tiny fake ctx: verify, decrypt, parse, dedupe; and
a cross-check of our test-side crypto against the official SDK (lark-oapi)."""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson
import pytest

from platforms.feishu import FeishuConfig, FeishuPlatform
from platforms.feishu.crypto import DecryptError, decrypt, signature
from proxy.errors import RequestError, VerificationError
from proxy.types import WebRequest
from tests.platforms.fake_ctx import FakeCtx
from tests.platforms.feishu.feishu_kit import (
    APP_ID,
    APP_SECRET,
    BOT,
    KEY,
    TOKEN,
    encrypted_body,
    lark_encrypt,
    lark_headers,
    payload,
    variant,
)


def adapter(encrypt_key: str | None = None, bot: str | None = BOT) -> tuple[FeishuPlatform, FakeCtx]:
    ctx = FakeCtx()
    config = FeishuConfig(app_id=APP_ID, app_secret=APP_SECRET, verification_token=TOKEN, encrypt_key=encrypt_key)
    fs = FeishuPlatform("lark", config, ctx)  # type: ignore[arg-type]
    fs.bot_open_id = bot
    return fs, ctx


def request(body: dict[str, Any] | bytes, headers: dict[str, str] | None = None) -> WebRequest:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    lower = {k.lower(): v for k, v in (headers or {}).items()}
    return WebRequest("POST", "/hooks/lark", lower, {}, raw)


def signed(event: dict[str, Any], **kw: Any) -> WebRequest:
    body = encrypted_body(event)
    return request(body, lark_headers(body, **kw))


# -- crypto --------------------------------------------------------------------------------------


def test_decrypt_and_signature_follow_the_documented_scheme():
    blob = lark_encrypt(KEY, b'{"hello":"world"}', iv=bytes(range(16)))
    assert decrypt(KEY, blob) == b'{"hello":"world"}'
    # Computed by hand: printf '%s' "1700000000nonce${KEY}body" | sha256sum
    assert (
        signature("1700000000", "nonce", KEY, b"body")
        == lark_headers(b"body", ts=1700000000, nonce="nonce")["X-Lark-Signature"]
    )


@pytest.mark.parametrize(
    "blob",
    [
        "not base64!",
        base64.b64encode(b"short").decode(),  # under two blocks
        base64.b64encode(bytes(40)).decode(),  # not block-aligned
        lark_encrypt("another key", b'{"a": 1}'),  # decrypts to garbage: bad padding (or not JSON)
    ],
    ids=["not-base64", "short", "unaligned", "another-key"],
)
def test_decrypt_rejects_bad_input(blob):
    try:
        out = decrypt(KEY, blob)
    except DecryptError:
        return
    with pytest.raises(orjson.JSONDecodeError):  # 1 in ~256 wrong keys still unpads: not JSON then
        orjson.loads(out)


def test_official_sdk_decrypts_our_test_encryption_and_accepts_our_signature():
    lark = pytest.importorskip("lark_oapi")
    from lark_oapi.core.model import RawRequest
    from lark_oapi.core.utils.decryptor import AESCipher

    event = payload("text_p2p")
    body = encrypted_body(event)
    assert orjson.loads(AESCipher(KEY).decrypt_str(orjson.loads(body)["encrypt"])) == event

    seen: list[Any] = []
    handler = lark.EventDispatcherHandler.builder(KEY, TOKEN).register_p2_im_message_receive_v1(seen.append).build()
    raw = RawRequest()
    raw.uri, raw.body, raw.headers = "/hooks/lark", body, lark_headers(body)
    assert (
        handler.do(raw).status_code == 200 and seen[0].event.message.message_id == "om_dc13264520392913993dd051dba21dcf"
    )
    raw.headers = lark_headers(body, key="wrong")
    assert handler.do(raw).status_code == 500  # the SDK refuses the signature we refuse


# -- verification --------------------------------------------------------------------------------


async def test_url_verification_plain():
    fs, _ = adapter()
    resp = await fs.handle(request(payload("url_verification")))
    assert (resp.status, orjson.loads(resp.body)) == (200, {"challenge": "ajls384kdjx98XX"})
    with pytest.raises(VerificationError):
        await fs.handle(request({**payload("url_verification"), "token": "v-tok-8f4c2a9d1X"}))


async def test_url_verification_encrypted_is_unsigned_and_token_checked():
    fs, _ = adapter(KEY)
    resp = await fs.handle(request(encrypted_body(payload("url_verification"))))
    assert orjson.loads(resp.body) == {"challenge": "ajls384kdjx98XX"}
    with pytest.raises(VerificationError):
        await fs.handle(request(encrypted_body({**payload("url_verification"), "token": "nope"})))
    with pytest.raises(VerificationError):  # garbage, unsigned: unauthorized, not a decrypt error
        await fs.handle(request(encrypted_body(payload("url_verification"), key="other")))


async def test_signed_encrypted_event_is_accepted():
    fs, ctx = adapter(KEY)
    resp = await fs.handle(signed(payload("text_p2p")))
    assert (resp.status, orjson.loads(resp.body)) == (200, {"msg": "success"})
    assert [m.text for m in ctx.submitted] == ["What is the capital of France?"]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda body, h: (body, {**h, "X-Lark-Signature": "0" * 64}),
        lambda body, h: (body.replace(b'"}', b'X"}'), h),  # body changed after signing
        lambda body, h: (body, {k: v for k, v in h.items() if k != "X-Lark-Signature"}),
        lambda body, h: (body, lark_headers(body, ts=int(time.time()) - 301)),  # stale
        lambda body, h: (body, lark_headers(body, ts=int(time.time()) + 301)),  # from the future
        lambda body, h: (body, lark_headers(body, key=TOKEN)),  # signed with the Verification Token
    ],
)
async def test_bad_signature_is_refused_before_anything_is_read(tamper):
    fs, ctx = adapter(KEY)
    body = encrypted_body(payload("text_p2p"))
    raw, headers = tamper(body, lark_headers(body))
    with pytest.raises(VerificationError):
        await fs.handle(request(raw, headers))
    assert ctx.submitted == [] and ctx.claimed == set()


async def test_signed_body_that_does_not_decrypt_is_a_400():
    fs, _ = adapter(KEY)
    body = encrypted_body(payload("text_p2p"), key="not-our-key")
    with pytest.raises(RequestError) as e:
        await fs.handle(request(body, lark_headers(body)))
    assert e.value.status == 400


async def test_token_mode_checks_header_token():
    fs, ctx = adapter()
    event = payload("text_p2p")
    event["header"]["token"] = "v-tok-forged"
    with pytest.raises(VerificationError):
        await fs.handle(request(event))
    del event["header"]["token"]
    with pytest.raises(VerificationError):
        await fs.handle(request(event))
    with pytest.raises(RequestError):  # encrypted body, but we have no key
        await fs.handle(request(encrypted_body(payload("text_p2p"))))
    assert ctx.submitted == []


async def test_malformed_bodies_are_400():
    fs, _ = adapter()
    for raw in (b"not json", b"[1, 2]"):
        with pytest.raises(RequestError):
            await fs.handle(request(raw))


@pytest.mark.parametrize("field", ["sender", "message"])
@pytest.mark.parametrize("value", ["ou_x", ["ou_x"], 7, True])
async def test_sender_or_message_that_is_not_an_object_is_400(field: str, value: Any):
    """Regression (issue 9): a string or list here was an AttributeError, a 500."""
    for key in (None, KEY):  # token mode, and signed + encrypted
        fs, ctx = adapter(key)
        event = payload("text_p2p")
        event["event"][field] = value
        with pytest.raises(RequestError) as e:
            await fs.handle(request(event) if key is None else signed(event))
        assert e.value.status == 400 and ctx.submitted == [] and ctx.claimed == set()


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("sender", "sender_id"), "ou_x"),  # an id object that is a string
        (("message", "mentions"), 5),
        (("message", "mentions"), [{"key": "@_user_1", "id": "ou_bot"}]),
        (("message", "root_id"), {"id": 1}),
        (("message", "chat_id"), ["oc_1"]),
    ],
)
async def test_wrongly_shaped_inner_fields_do_not_raise(where: tuple[str, str], value: Any):
    fs, ctx = adapter()
    event = payload("text_group_mention")
    event["event"][where[0]][where[1]] = value
    resp = await fs.handle(request(event))
    assert resp.status == 200
    for msg in ctx.submitted:
        assert all(isinstance(v, str) for v in (msg.event_id, msg.chat_id, msg.user_id, msg.reply_to))
        assert msg.thread_id is None or isinstance(msg.thread_id, str)


# -- parsing -------------------------------------------------------------------------------------


async def test_p2p_text_is_parsed():
    fs, ctx = adapter()
    await fs.handle(request(payload("text_p2p")))
    (msg,) = ctx.submitted
    assert (msg.event_id, msg.chat_id, msg.user_id, msg.direct, msg.kind) == (
        "5e3702a84e847582be8db7fb73283c02",
        "oc_5ad11d72b830411d72b836c20",
        "ou_84aad35d084aa403a838cf73ee18467",
        True,
        "text",
    )
    assert msg.reply_to == "om_dc13264520392913993dd051dba21dcf" and msg.thread_id is None


async def test_group_mention_bot_removed_other_people_named_thread_kept():
    fs, ctx = adapter()
    await fs.handle(request(payload("text_group_mention")))
    (msg,) = ctx.submitted
    assert (msg.text, msg.direct) == ("please summarise what @Grace wrote", False)
    assert msg.thread_id == "om_40eb06e7b84dc71c03e009ad3c754195"


async def test_group_without_our_mention_is_ignored_unless_bot_id_unknown():
    body = payload("text_group_mention")
    body["event"]["message"]["mentions"] = body["event"]["message"]["mentions"][1:]  # only Grace
    fs, ctx = adapter()
    assert (await fs.handle(request(body))).status == 200
    assert ctx.submitted == []
    fs, ctx = adapter(bot=None)  # bot info failed at start: whatever reached us is for us
    await fs.handle(request(body))
    assert [m.text for m in ctx.submitted] == ["please summarise what @Grace wrote"]


async def test_post_text_is_read_and_image_kind_set():
    fs, ctx = adapter()
    await fs.handle(request(payload("post_group")))
    await fs.handle(request(payload("image_p2p")))
    post, image = ctx.submitted
    assert post.text == "Release notes\ntranslate into French:\nFaster startup, see the notes"
    assert (image.kind, image.text) == ("image", "")


@pytest.mark.parametrize(
    ("mtype", "kind"), [("audio", "voice"), ("media", "video"), ("file", "file"), ("sticker", "sticker")]
)
async def test_other_message_types_set_kind(mtype, kind):
    fs, ctx = adapter()
    await fs.handle(request(payload("image_p2p", message_type=mtype, content='{"file_key": "file_v2_x"}')))
    assert [m.kind for m in ctx.submitted] == [kind]


async def test_app_senders_and_other_events_are_acked_and_ignored():
    fs, ctx = adapter()
    from_app = payload("text_p2p")
    from_app["event"]["sender"]["sender_type"] = "app"
    for body in (from_app, payload("chat_updated")):
        resp = await fs.handle(request(body))
        assert orjson.loads(resp.body) == {"msg": "success"}
    assert ctx.submitted == []


async def test_duplicates_by_event_id_and_by_message_id():
    fs, ctx = adapter()
    first = payload("text_p2p")
    await fs.handle(request(first))
    await fs.handle(request(first))  # Feishu's retry: same event_id
    await fs.handle(request(variant(first, "ev-redelivered", "om_dc13264520392913993dd051dba21dcf")))
    await fs.handle(request(variant(first, "ev-new", "om_new", text="another")))
    assert [m.text for m in ctx.submitted] == ["What is the capital of France?", "another"]
