"""Signatures, safe-mode crypto and XML: against our own reading of the protocol and wechatpy."""

from __future__ import annotations

import pytest
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidSignatureException
from wechatpy.utils import check_signature

from platforms.wechat_mp.crypto import DecryptError, WeChatCipher, aes_key, signature, signature_ok
from platforms.wechat_mp.xml import MalformedXML, cdata, encrypted_reply, parse_fields, text_reply
from tests.platforms.wechat_mp.wechat_kit import (
    AES_KEY,
    APP_ID,
    TOKEN,
    aes_encrypt,
    decrypt,
    encrypt,
    fields,
    frame,
    payload,
    sha1_sorted,
)


def test_signature_is_sha1_of_string_sorted_values_and_matches_wechatpy():
    # "1469873523" sorts before "9" as a string, not as a number
    ts, nonce = "9", "1469873523"
    expected = sha1_sorted(TOKEN, ts, nonce)
    assert signature(TOKEN, ts, nonce) == expected
    check_signature(TOKEN, expected, ts, nonce)  # raises if wechatpy disagrees
    assert signature_ok(expected, TOKEN, ts, nonce)
    assert not signature_ok(expected[:-1] + ("0" if expected[-1] != "0" else "1"), TOKEN, ts, nonce)
    with pytest.raises(InvalidSignatureException):
        check_signature(TOKEN, signature(TOKEN, ts, "other"), ts, nonce)


def test_aes_key_needs_43_base64_characters():
    assert len(aes_key(AES_KEY)) == 32
    with pytest.raises(ValueError):
        aes_key(AES_KEY[:-4])
    with pytest.raises(ValueError):
        aes_key("!" * 43)


def test_our_ciphertext_decrypts_with_wechatpy_and_the_kit():
    cipher = WeChatCipher(AES_KEY, APP_ID)
    xml = "<xml><Content><![CDATA[你好, world]]></Content></xml>"
    enc = cipher.encrypt(xml.encode())
    assert decrypt(enc) == (xml.encode(), APP_ID)
    ts, nonce = "1732312800", "abc"
    body = f"<xml><Encrypt><![CDATA[{enc}]]></Encrypt></xml>"
    sig = sha1_sorted(TOKEN, ts, nonce, enc)
    assert WeChatCrypto(TOKEN, AES_KEY, APP_ID).decrypt_message(body, sig, ts, nonce) == xml


def test_wechatpy_ciphertext_decrypts_with_ours():
    xml = "<xml><Content><![CDATA[from wechatpy]]></Content></xml>"
    envelope = WeChatCrypto(TOKEN, AES_KEY, APP_ID).encrypt_message(xml, "n0nce", "1732312800")
    enc = fields(envelope)["Encrypt"]
    assert WeChatCipher(AES_KEY, APP_ID).decrypt(enc).decode() == xml
    assert fields(envelope)["MsgSignature"] == signature(TOKEN, "1732312800", "n0nce", enc)


@pytest.mark.parametrize("size", [0, 1, 11, 12, 43, 44, 1000])
def test_every_pad_length_round_trips(size: int):
    message = b"x" * size
    assert WeChatCipher(AES_KEY, APP_ID).decrypt(encrypt(message)) == message


def test_decrypt_refuses_another_app_id():
    with pytest.raises(DecryptError, match="AppID"):
        WeChatCipher(AES_KEY, APP_ID).decrypt(encrypt(b"<xml/>", app_id="wx0000000000000000"))


@pytest.mark.parametrize("pad", [0, 33, 255])
def test_decrypt_refuses_pad_values_outside_1_to_32(pad: int):
    body = frame(b"<xml/>")
    fill = 32 - len(body) % 32
    raw = body + b"\x00" * (fill - 1) + bytes([pad])  # block-aligned, but the last byte is not 1..32
    with pytest.raises(DecryptError, match="padding"):
        WeChatCipher(AES_KEY, APP_ID).decrypt(aes_encrypt(raw))


def test_decrypt_refuses_garbage():
    cipher = WeChatCipher(AES_KEY, APP_ID)
    for bad in ["not base64!!", "", "QUJD", aes_encrypt(b"\x10" * 32)]:
        with pytest.raises(DecryptError):
            cipher.decrypt(bad)
    other = WeChatCipher("A" * 43, APP_ID)  # a different key
    with pytest.raises(DecryptError):
        other.decrypt(encrypt(b"<xml/>"))


def test_parse_fields_reads_recorded_payloads():
    f = parse_fields(payload("text"))
    assert f["MsgType"] == "text" and f["Content"] == "hello there" and f["MsgId"] == "24602465467433024"
    assert parse_fields(payload("location"))["Label"] == "People's Square, Shanghai"


@pytest.mark.parametrize("name", ["billion_laughs", "xxe"])
def test_parse_fields_refuses_dtds(name: str):
    with pytest.raises(MalformedXML, match="DTD"):
        parse_fields(payload(name))


@pytest.mark.parametrize("body", [b"", b"<xml><a>", b"not xml", b"<root><a>1</a></root>"])
def test_parse_fields_refuses_malformed(body: bytes):
    with pytest.raises(MalformedXML):
        parse_fields(body)


def test_text_reply_escapes_cdata_end_and_control_characters():
    xml = text_reply("oUser", "gh_x", "a ]]> b\x00\x07 c", now=1732312800)
    assert fields(xml) == {
        "ToUserName": "oUser",
        "FromUserName": "gh_x",
        "CreateTime": "1732312800",
        "MsgType": "text",
        "Content": "a ]]> b c",
    }
    assert cdata("]]>") == "<![CDATA[]]]]><![CDATA[>]]>"


def test_encrypted_reply_opens_with_wechatpy():
    cipher = WeChatCipher(AES_KEY, APP_ID)
    inner = text_reply("oUser", "gh_x", "encrypted hello", now=1732312800)
    enc = cipher.encrypt(inner.encode())
    xml = encrypted_reply(enc, signature(TOKEN, "1732312801", "nn", enc), "1732312801", "nn")
    plain = WeChatCrypto(TOKEN, AES_KEY, APP_ID).decrypt_message(xml, fields(xml)["MsgSignature"], "1732312801", "nn")
    assert fields(plain)["Content"] == "encrypted hello"
