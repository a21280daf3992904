"""Unit tests: the crypto against wechatpy's enterprise crypto both ways, the byte splitter,
the API client's errors, the config."""

from __future__ import annotations

import base64

import aiohttp
import pytest
from pydantic import ValidationError
from wechatpy.crypto import _get_signature
from wechatpy.enterprise.crypto import PrpCrypto, WeChatCrypto

from platforms.wecom import WeComBotConfig, WeComBotPlatform, WeComConfig
from platforms.wecom.api import WeComAPI, WeComAPIError
from platforms.wecom.callback import CallbackCrypto
from platforms.wecom.text import prefix, split_bytes
from proxy.errors import DeliveryError, VerificationError
from tests.platforms.fake_ctx import FakeCtx
from tests.platforms.wecom.wecom_kit import AES_KEY, AGENT_ID, CORP_ID, SECRET, TOKEN, FakeWeCom, Signer

KEY = base64.b64decode(AES_KEY + "=")


@pytest.mark.parametrize("receive_id", [CORP_ID, ""])
def test_what_wechatpy_encrypts_we_open_and_what_we_seal_wechatpy_opens(receive_id: str):
    ours = CallbackCrypto(TOKEN, AES_KEY, receive_id, "test")
    signer = Signer(receive_id)
    message = '{"msgtype": "text", "text": {"content": "企业微信 ✓"}}'
    encrypted = signer.encrypt(message)
    query = signer.query(encrypted)
    ours.check(query, encrypted, 300)
    assert ours.open(encrypted).decode() == message

    sealed, sig, ts = ours.seal(message.encode(), "nonce-1")
    assert sig == _get_signature(TOKEN, ts, "nonce-1", sealed)
    assert PrpCrypto(KEY).decrypt(sealed, receive_id) == message
    if receive_id:  # wechatpy's own URL verification, over our sealed value as the echostr
        assert WeChatCrypto(TOKEN, AES_KEY, receive_id).check_signature(sig, ts, "nonce-1", sealed) == message


def test_a_value_for_another_receive_id_or_with_a_bad_signature_is_refused():
    ours = CallbackCrypto(TOKEN, AES_KEY, CORP_ID, "test")
    encrypted = Signer("ww0000000000000000").encrypt("<xml/>")
    with pytest.raises(VerificationError):
        ours.open(encrypted)
    good = Signer(CORP_ID).encrypt("<xml/>")
    query = Signer(CORP_ID).query(good)
    for bad in ({**query, "msg_signature": "f" * 40}, {**query, "nonce": ""}, {**query, "timestamp": "12x"}):
        with pytest.raises(VerificationError):
            ours.check(bad, good, 300)
    with pytest.raises(VerificationError):
        ours.check(query, good + "A", 300)


def test_split_bytes_never_exceeds_the_limit_or_cuts_a_character():
    text = "汉字" * 1000 + " tail 😀" * 200
    parts = split_bytes(text, 2048)
    assert all(len(p.encode()) <= 2048 for p in parts)
    assert "".join(parts).replace(" ", "") == text.replace(" ", "")
    assert split_bytes("", 2048) == [] and split_bytes("short", 2048) == ["short"]
    assert split_bytes("aaaa bbbb", 6) == ["aaaa", "bbbb"]  # cut on the space
    assert split_bytes("一二三", 7) == ["一二", "三"]  # 6 bytes fit, the 7th would split a character
    assert prefix("一二三", 8) == "一二" and prefix("一二三", 9) == "一二三"


async def test_api_errors_are_delivery_errors_that_carry_no_secret():
    async with FakeWeCom() as fake, aiohttp.ClientSession() as http:
        api = WeComAPI(http, fake.base_url, CORP_ID, SECRET, AGENT_ID)
        fake.send_errors.append(60020)  # not a token error: no retry
        with pytest.raises(WeComAPIError) as err:
            await api.send_text("ZhangSan", "hi")
        assert isinstance(err.value, DeliveryError) and err.value.errcode == 60020
        assert "60020" in str(err.value) and SECRET not in str(err.value) and "ACCESS_TOKEN" not in str(err.value)
        fake.send_errors.extend([42001, 42001])  # refreshed and retried once, then given up
        with pytest.raises(WeComAPIError):
            await api.send_text("ZhangSan", "hi")
        assert len(fake.token_calls) == 2
        wrong = WeComAPI(http, fake.base_url, CORP_ID, "not-the-secret", AGENT_ID)
        with pytest.raises(WeComAPIError) as err:
            await wrong.send_text("ZhangSan", "hi")
        assert "not-the-secret" not in str(err.value) and "gettoken" in str(err.value)


def test_config_checks_the_aes_key_and_the_byte_limits():
    base = {"kind": "wecom", "corp_id": CORP_ID, "agent_id": AGENT_ID, "secret": SECRET, "token": TOKEN}
    assert WeComConfig(**base, encoding_aes_key=AES_KEY).text_limit == 2048
    assert WeComConfig(**base, encoding_aes_key=AES_KEY).language() == "zh"
    for bad in ({"encoding_aes_key": AES_KEY[:-1]}, {"encoding_aes_key": AES_KEY, "text_limit": 4096}):
        with pytest.raises(ValidationError):
            WeComConfig(**{**base, **bad})
    bot = WeComBotConfig(kind="wecom_bot", token=TOKEN, encoding_aes_key=AES_KEY)
    assert (bot.text_limit, bot.response_url_hosts) == (20480, ["qyapi.weixin.qq.com"])


def test_only_a_response_url_on_an_allowed_https_host_is_kept():
    config = WeComBotConfig(kind="wecom_bot", token=TOKEN, encoding_aes_key=AES_KEY)
    bot = WeComBotPlatform("bot", config, FakeCtx())  # type: ignore[arg-type]
    good = "https://qyapi.weixin.qq.com/cgi-bin/aibot/response?response_code=RC"
    assert bot._response_url({"response_url": good}) == good
    for bad in (
        "http://qyapi.weixin.qq.com/cgi-bin/aibot/response?response_code=RC",
        "https://qyapi.weixin.qq.com.evil.example/cgi-bin/aibot/response",
        "https://user:pw@qyapi.weixin.qq.com/cgi-bin/aibot/response",
        "https://127.0.0.1/cgi-bin/aibot/response",
        "not a url",
    ):
        assert bot._response_url({"response_url": bad}) is None, bad
