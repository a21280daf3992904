"""In-chat model choice (/model), moderation and admin commands, through the real app: messages
in from a DingTalk robot (signed callbacks), answers out at its fake sessionWebhook, generations
at a fake OpenAI upstream."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import yaml

from proxy.app import create_app
from proxy.config import load_config, parse_config
from proxy.errors import ConfigError
from tests.fakes.openai_upstream import FakeOpenAI
from tests.platforms.dingtalk.dingtalk_kit import SECRET
from tests.platforms.dingtalk.test_dingtalk import exchange

ADMIN = "manager4411"  # the sender of the recorded text_direct callback


def config(tmp_path: Any, up: FakeOpenAI, channel: dict[str, Any], **ding: Any) -> dict[str, Any]:
    return {
        "store": {"url": f"sqlite:///{tmp_path}/{uuid.uuid4().hex}.db"},  # each chat() its own
        "providers": {
            "gpt": {"kind": "openai", "base_url": up.base_url, "api_key": "k", "model": "gpt-a"},
            "mini": {"kind": "openai", "base_url": up.base_url, "api_key": "k", "model": "gpt-b"},
            "deadmod": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "k"},
            "echo": {"kind": "echo"},
        },
        "platforms": {
            "ding": {
                "kind": "dingtalk",
                "app_secret": SECRET,
                "allow_insecure_webhook_hosts": ["127.0.0.1"],
                "locale": "en",
                **ding,
            }
        },
        "channels": [{"name": "support", "match": {"platform": "ding"}, "providers": ["gpt"], **channel}],
    }


async def chat(tmp_path: Any, up: FakeOpenAI, messages: list[str], channel: dict[str, Any], **ding: Any) -> list[str]:
    """Each message sent in turn, its answer awaited; what the bot said, in order."""
    path = tmp_path / f"{uuid.uuid4().hex}.yaml"  # from a file, so /reload has one to read
    path.write_text(yaml.safe_dump(config(tmp_path, up, channel, **ding)))
    return await exchange(create_app(load_config(path, {})), messages)


def models_seen(up: FakeOpenAI) -> list[str]:
    return [r.json["model"] for r in up.chat_requests()]


async def test_model_lists_switches_and_clear_forgets_the_choice(tmp_path):
    async with FakeOpenAI() as up:
        said = await chat(
            tmp_path,
            up,
            ["one", "/model", "/model MINI", "two", "/model nope", "/model", "/clear", "three"],
            {"choosable": ["gpt", "mini"]},
        )
    assert said == [
        "upstream: one",
        "This chat uses gpt. Choose another with /model NAME: gpt, mini.",
        "Done: this chat now uses mini. /clear goes back to the default.",
        "upstream: two",
        "There is no nope to choose here. Choose from: gpt, mini.",
        "This chat uses mini. Choose another with /model NAME: gpt, mini.",
        "Done: I have forgotten our conversation. Let's start fresh.",
        "upstream: three",
    ]
    assert models_seen(up) == ["gpt-a", "gpt-b", "gpt-a"]


async def test_model_without_choices_says_so_and_the_choice_fails_over(tmp_path):
    async with FakeOpenAI() as up:
        assert await chat(tmp_path, up, ["/model"], {}) == ["This chat uses gpt; there is no other model to choose."]
    async with FakeOpenAI() as up:
        up.fail(500, times=10)  # the chosen provider (mini) fails: the channel's chain answers
        said = await chat(tmp_path, up, ["/model mini", "hello"], {"providers": ["gpt", "echo"], "choosable": ["mini"]})
    assert said[1] == "echo: hello"
    assert models_seen(up)[0] == "gpt-b"


async def test_blocked_words_and_patterns_never_reach_the_upstream(tmp_path):
    mod = {"block": ["badword", "赌博"], "block_regex": [r"\b\d{16}\b"]}
    async with FakeOpenAI() as up:
        said = await chat(tmp_path, up, ["a BadWord here", "card 1234567812345678", "网上赌博", "fine"], {"moderation": mod})
    assert said == ["Sorry, I can't help with that message."] * 3 + ["upstream: fine"]
    assert [r.json["messages"][-1]["content"] for r in up.chat_requests()] == ["fine"]


async def test_a_blocked_answer_is_replaced_before_it_is_sent(tmp_path):
    async with FakeOpenAI(answer="here comes the badword, in the middle of a long answer") as up:
        said = await chat(tmp_path, up, ["hello"], {"moderation": {"block": ["badword"]}, "texts": {"blocked_output": "[withheld]"}})
    assert said == ["[withheld]"]


async def test_the_moderation_provider_blocks_input_and_output(tmp_path):
    async with FakeOpenAI() as up:
        said = await chat(tmp_path, up, ["a forbidden question", "ok question"], {"moderation": {"provider": "gpt"}})
        # "ok question" passes; its answer "upstream: ok question" is checked too and passes
        assert said == ["Sorry, I can't help with that message.", "upstream: ok question"]
        checked = [r.json["input"] for r in up.requests if r.path.endswith("/moderations")]
        assert checked == ["a forbidden question", "ok question", "upstream: ok question"]
    async with FakeOpenAI(answer="the forbidden answer") as up:
        said = await chat(tmp_path, up, ["tell me"], {"moderation": {"provider": "gpt"}}, locale="zh")
    assert said == ["（该回答已被内容过滤器拦截。）"]


async def test_a_failing_moderation_provider_lets_through_or_blocks_as_configured(tmp_path):
    async with FakeOpenAI() as up:
        opened = await chat(tmp_path, up, ["hello"], {"moderation": {"provider": "deadmod", "output": False}})
    async with FakeOpenAI() as up:
        closed = await chat(tmp_path, up, ["hello"], {"moderation": {"provider": "deadmod", "fail_closed": True}})
        assert up.chat_requests() == []
    assert opened == ["upstream: hello"]
    assert closed == ["Sorry, I can't help with that message."]


async def test_admin_commands_answer_admins_only(tmp_path):
    async with FakeOpenAI() as up:
        said = await chat(tmp_path, up, ["/status", "/usage", "/reload"], {}, admins=[ADMIN])
        others = await chat(tmp_path, up, ["/status"], {}, admins=["someone-else"])
        nobody = await chat(tmp_path, up, ["/status"], {})
    status, usage, reload = said
    assert "provider gpt (openai): circuit closed" in status and "platform ding (dingtalk)" in status
    assert usage.startswith("Tokens since ") and "(total)" in usage
    assert reload.startswith("config reloaded (chat:ding)")
    assert others == ["Only the bot's admins can use /status."]
    assert nobody == ["upstream: /status"]  # no admins configured: not a command, an ordinary message


@pytest.mark.parametrize(
    ("channel", "where", "what"),
    [
        ({"choosable": ["nope"]}, "channels[0].choosable[0]", "unknown provider 'nope'"),
        ({"moderation": {"block_regex": ["(unclosed"]}}, "channels[0].moderation.block_regex[0]", "not a valid regular expression"),
        ({"moderation": {"provider": "echo"}}, "channels[0].moderation.provider", "'echo' (kind echo) cannot moderate"),
        ({"moderation": {"provider": "ghost"}}, "channels[0].moderation.provider", "unknown provider 'ghost'"),
    ],
)
async def test_bad_choices_and_moderation_are_config_errors(tmp_path, channel, where, what):
    async with FakeOpenAI() as up:
        with pytest.raises(ConfigError) as e:
            parse_config(config(tmp_path, up, channel), {})
    assert str(e.value).startswith(f"{where}: {what}"), str(e.value)
