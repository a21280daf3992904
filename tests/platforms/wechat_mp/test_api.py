"""The customer-service client against a fake WeChat API on loopback."""

from __future__ import annotations

import aiohttp
import pytest

from platforms.wechat_mp.api import CustomerService, WeChatAPIError
from tests.platforms.wechat_mp.wechat_kit import APP_ID, APP_SECRET, OPENID, FakeWeChatAPI


async def test_token_is_fetched_once_and_reused():
    async with FakeWeChatAPI() as fake, aiohttp.ClientSession() as http:
        cs = CustomerService(http, fake.base_url, APP_ID, APP_SECRET)
        for text in ("one", "two", "three"):
            await cs.send_text(OPENID, text)
        assert fake.token_calls == [{"grant_type": "client_credential", "appid": APP_ID, "secret": APP_SECRET}]
        assert [s["json"] for s in fake.sends] == [
            {"touser": OPENID, "msgtype": "text", "text": {"content": t}} for t in ("one", "two", "three")
        ]
        assert {s["access_token"] for s in fake.sends} == {"ACCESS_TOKEN_1"}


@pytest.mark.parametrize("code", [40001, 42001])
async def test_an_invalid_token_is_refreshed_once(code: int):
    async with FakeWeChatAPI() as fake, aiohttp.ClientSession() as http:
        cs = CustomerService(http, fake.base_url, APP_ID, APP_SECRET)
        fake.send_errors.append(code)
        await cs.send_text(OPENID, "hello")
        assert len(fake.token_calls) == 2 and fake.texts == ["hello"]
        assert [s["access_token"] for s in fake.sends] == ["ACCESS_TOKEN_1", "ACCESS_TOKEN_2"]
        fake.send_errors.extend([40001, 40001])
        with pytest.raises(WeChatAPIError) as err:  # still refused after one refresh: give up
            await cs.send_text(OPENID, "again")
        assert err.value.errcode == 40001 and "ACCESS_TOKEN" not in str(err.value)
        assert len(fake.sends) == 4


async def test_errors_are_reported_without_secrets():
    async with FakeWeChatAPI() as fake, aiohttp.ClientSession() as http:
        cs = CustomerService(http, fake.base_url, APP_ID, APP_SECRET)
        fake.send_errors.append(45015)
        with pytest.raises(WeChatAPIError) as err:
            await cs.send_text(OPENID, "late")
        assert err.value.errcode == 45015 and "45015" in str(err.value)
        wrong = CustomerService(http, fake.base_url, APP_ID, "wrong-secret")
        with pytest.raises(WeChatAPIError) as err:
            await wrong.send_text(OPENID, "x")
        assert err.value.errcode == 40125 and "wrong-secret" not in str(err.value)
    async with aiohttp.ClientSession() as http2:  # the fake is gone now
        down = CustomerService(http2, fake.base_url, APP_ID, APP_SECRET)
        with pytest.raises(WeChatAPIError) as err:
            await down.send_text(OPENID, "x")
        assert APP_SECRET not in str(err.value)
