"""The bot's own texts: built-in en/zh bundles chosen by the platform's locale, overridden per
platform and per channel, placeholders checked at config load; what reaches the fake platform."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from proxy.app import create_app
from proxy.config import parse_config
from proxy.errors import ConfigError
from proxy.texts import BUNDLES, TABLE, check, placeholders
from tests.fakes.openai_upstream import FakeOpenAI
from tests.platforms.dingtalk.dingtalk_kit import SECRET, FakeWebhook, payload
from tests.platforms.dingtalk.test_dingtalk import exchange, send, wait_posts
from tests.servers import serve_asgi


def config(tmp_path: Any, up: FakeOpenAI | None = None, ding: dict[str, Any] | None = None, **channel: Any):
    return {
        "store": {"url": f"sqlite:///{tmp_path}/t.db"},
        "providers": {
            "echo": {"kind": "echo"},
            "gpt": {"kind": "openai", "base_url": up.base_url if up else "http://127.0.0.1:9", "api_key": "k"},
        },
        "platforms": {
            "ding": {"kind": "dingtalk", "app_secret": SECRET, "allow_insecure_webhook_hosts": ["127.0.0.1"], **(ding or {})}
        },
        "channels": [{"name": "support", "match": {"platform": "ding"}, "providers": ["echo"], **channel}],
    }


async def said(tmp_path: Any, messages: list[str], up: FakeOpenAI | None = None, ding: dict[str, Any] | None = None, **channel: Any) -> list[str]:
    """Send each text as a DingTalk message in turn; what the bot said back, in order."""
    return await exchange(create_app(parse_config(config(tmp_path, up, ding, **channel), {})), messages)


async def test_dingtalk_speaks_chinese_by_default_and_english_when_told(tmp_path):
    assert await said(tmp_path, ["/clear"]) == ["好的，我已忘记之前的对话，我们重新开始吧。"]
    assert await said(tmp_path, ["\\clear"], ding={"locale": "en"}) == [
        "Done: I have forgotten our conversation. Let's start fresh."
    ]


async def test_platform_and_channel_texts_override_single_entries(tmp_path):
    got = await said(
        tmp_path,
        ["/help", "/clear"],
        ding={"texts": {"cleared": "已清空。", "help": "平台帮助 {channel}"}},
        texts={"help": "Ask {channel} about orders; {{braces}} stay."},
    )
    # the channel's help wins over the platform's; the platform's /clear text is used
    assert got == ["Ask support about orders; {braces} stay.", "已清空。"]


async def test_quota_exhausted_everywhere_is_told_not_the_generic_apology(tmp_path):
    async with FakeOpenAI() as up:
        up.quota()
        assert await said(tmp_path, ["hello"], up=up, providers=["gpt"]) == ["抱歉，AI 服务的额度已用完，请稍后再试或联系管理员。"]
        up.fail(500, times=10)
        assert await said(tmp_path, ["hello again"], up=up, providers=["gpt"], ding={"locale": "en"}) == [
            "Sorry, I could not get an answer right now. Please try again in a moment."
        ]


async def test_the_over_limit_notice_is_in_the_platforms_language(tmp_path):
    limits = {"users": {"*": {"rpm": 1}}}
    async with FakeWebhook() as hook:
        cfg = {**config(tmp_path), "limits": limits}
        async with serve_asgi(create_app(parse_config(cfg, {}))) as url, httpx.AsyncClient() as c:
            for n in (1, 2):
                body = payload("text_direct", msgId=f"m{n}", sessionWebhook=hook.url, text={"content": f"q{n}"})
                await send(c, url, body)
                await wait_posts(hook, n)
    first, notice = (p["markdown"]["text"] for p in hook.posts)
    assert first.endswith("q1")
    assert notice.startswith("你已达到使用上限，请 ") and notice.endswith(" 秒 后再试。"), notice


def test_unknown_placeholders_and_keys_are_config_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        parse_config(config(tmp_path, texts={"help": "Hi from {chanel}"}), {})
    assert "channels[0].texts.help: unknown placeholder" in str(e.value) and "{chanel}" in str(e.value) and "{channel}" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config(config(tmp_path, ding={"texts": {"greeting": "hi"}}), {})
    assert "platforms.ding.texts.greeting" in str(e.value) and "unknown key" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config(config(tmp_path, ding={"locale": "fr"}), {})
    assert "platforms.ding.locale" in str(e.value) and "is not one of the choices" in str(e.value)
    with pytest.raises(ValueError, match="literal brace"):
        check("apology", "Sorry {")


def test_every_text_exists_in_both_bundles_with_the_same_placeholders():
    for name, (_, en, zh, _) in TABLE.items():
        assert en.strip() and zh.strip(), name
        # a translation that drops or adds a placeholder would say less, or break, in one language
        assert placeholders(en) == placeholders(zh), name
    assert BUNDLES["zh"].wait(42) == "42 秒" and BUNDLES["en"].wait(150) == "3 min"
