"""The bot's own words: every text Switchboard says by itself in a chat, in bundles per language.

A platform's `locale` (`en` or `zh`; each kind has its default, e.g. `zh` for WeChat and
DingTalk) picks a built-in bundle; the platform's `texts:` and then the answering channel's
`texts:` override single entries:

    platforms:
      wechat: {kind: wechat_mp, ..., texts: {apology: "服务繁忙，请稍后再试。"}}
    channels:
      - {name: support, providers: [gpt], texts: {help: "Ask me about {channel}: orders, returns."}}

Placeholders are `{name}` (a literal brace is `{{` / `}}`); each text takes only its own (`help`
takes `{channel}`, `limited` takes `{wait}`, ...), checked at config load, so a typo is a
config error instead of a message that breaks in a chat.
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, create_model, field_validator

Locale = Literal["en", "zh"]
LOCALES: tuple[str, ...] = ("en", "zh")

#: name -> (placeholders it takes, English, Chinese, what it is for). The one table: the bundles,
#: the config model and the placeholder checks are made from it.
TABLE: dict[str, tuple[tuple[str, ...], str, str, str]] = {
    "help": (
        ("channel",),
        "I'm an AI assistant connected through Switchboard (channel {channel}).\n"
        "Just write your question and I'll answer; I remember our conversation.\n"
        "/clear: forget our conversation.  /help: this message.",
        "我是通过 Switchboard 接入的 AI 助手（频道 {channel}）。\n"
        "直接发送你的问题即可，我会记住我们的对话。\n"
        "/clear：清除对话记录。  /help：显示本帮助。",
        "The answer to /help (`{channel}`: the channel's name); the platform's own hints follow it.",
    ),
    "cleared": (
        (),
        "Done: I have forgotten our conversation. Let's start fresh.",
        "好的，我已忘记之前的对话，我们重新开始吧。",
        "The answer to /clear.",
    ),
    "apology": (
        (),
        "Sorry, I could not get an answer right now. Please try again in a moment.",
        "抱歉，暂时无法获取回答，请稍后再试。",
        "When every provider of the channel failed.",
    ),
    "quota": (
        (),
        "Sorry, the assistant's usage quota is used up. Please try again later or tell the bot's admin.",
        "抱歉，AI 服务的额度已用完，请稍后再试或联系管理员。",
        "When every provider failed because its quota or balance is exhausted.",
    ),
    "unsupported": (
        (),
        "Sorry, I can only read text messages for now. Please send your question as text.",
        "抱歉，我目前只能阅读文字消息，请用文字发送你的问题。",
        "The answer to an image, voice message, file, sticker... (anything but text).",
    ),
    "no_channel": (
        (),
        "Sorry, this chat is not connected to any assistant.",
        "抱歉，这个会话还没有接入任何助手。",
        "When no channel matches the message.",
    ),
    "cut_off": (
        (),
        "\n\n(Sorry, the answer was cut off: the backend failed midway.)",
        "\n\n（抱歉，回答中断了：后端服务中途出错。）",
        "Appended to an answer whose stream broke off midway.",
    ),
    "rejected": (
        ("reason",),
        "Sorry, the assistant could not take this message: {reason}",
        "抱歉，助手无法处理这条消息：{reason}",
        "When the backend refused the message itself (`{reason}`: the backend's words).",
    ),
    "too_long": (
        (),
        "Sorry, our conversation has grown too long for the assistant. Send /clear to start fresh.",
        "抱歉，我们的对话太长了，助手无法处理。发送 /clear 重新开始。",
        "When the conversation no longer fits the model's context.",
    ),
    "limited": (
        ("wait",),
        "You have reached your usage limit; please try again in {wait}.",
        "你已达到使用上限，请 {wait} 后再试。",
        "The over-limit notice, once per window (`{wait}`: the time until the window ends); a `message` in `limits:` "
        "takes precedence.",
    ),
    "code_refused": (
        (),
        "Switchboard does not run code from chat messages.",
        "Switchboard 不会执行聊天消息中的代码。",
        "The answer to a `python:` / `bash:` message (Synology Chat).",
    ),
    "no_image_url": (
        (),
        "(An image was generated, but it has no link this chat can show.)",
        "（已生成图片，但没有可在此显示的链接。）",
        "When a generated image has no URL the platform can fetch.",
    ),
    "empty": (
        (),
        "(no answer)",
        "（没有回答）",
        "Shown where a platform cannot post an empty message and the answer was empty.",
    ),
    "blocked": (
        (),
        "Sorry, I can't help with that message.",
        "抱歉，这条消息无法处理。",
        "The answer to a message the channel's moderation blocked (no model is called).",
    ),
    "blocked_output": (
        (),
        "(This answer was withheld by the content filter.)",
        "（该回答已被内容过滤器拦截。）",
        "What replaces an answer the channel's moderation blocked.",
    ),
    "model_current": (
        ("current", "choices"),
        "This chat uses {current}. Choose another with /model NAME: {choices}.",
        "本会话当前使用 {current}。发送 /model 名称 切换，可选：{choices}。",
        "The answer to /model (`{current}`: the provider in use, `{choices}`: those the channel allows).",
    ),
    "model_set": (
        ("model",),
        "Done: this chat now uses {model}. /clear goes back to the default.",
        "好的，本会话现在使用 {model}。发送 /clear 恢复默认。",
        "The answer to /model NAME.",
    ),
    "model_unknown": (
        ("model", "choices"),
        "There is no {model} to choose here. Choose from: {choices}.",
        "没有可选的 {model}。可选：{choices}。",
        "The answer to /model NAME when NAME is not one of the channel's choices.",
    ),
    "model_fixed": (
        ("current",),
        "This chat uses {current}; there is no other model to choose.",
        "本会话使用 {current}，没有其他模型可选。",
        "The answer to /model when the channel has no `choosable` providers.",
    ),
    "admin_only": (
        ("command",),
        "Only the bot's admins can use {command}.",
        "只有管理员可以使用 {command}。",
        "The answer to an admin command (/reload, /status, /usage) from someone else.",
    ),
    "wechat_coming": (
        (),
        "This answer needs a little more time. Send 1 in a moment and I will show it to you.",
        "这个回答需要多一点时间，请稍后发送 1 查看。",
        "WeChat: the passive reply when the answer is not ready within WeChat's 5 s.",
    ),
    "wechat_still_working": (
        (),
        "Still working on it. Send 1 again in a moment.",
        "还在生成中，请稍后再发送 1。",
        'WeChat: the answer to "1" while the answer is still being generated.',
    ),
    "wechat_more": (
        (),
        "\n\n(Send 1 for the rest.)",
        "\n\n（发送 1 查看剩余内容。）",
        "WeChat: appended to a part of an answer too long for one message.",
    ),
    "wechat_help": (
        (),
        "If an answer takes too long, send 1 to get it.",
        "如果回答等待太久，发送 1 获取。",
        "WeChat: added to /help when answers can only come passively.",
    ),
    "discord_help": (
        (),
        "In servers, mention me or reply to one of my messages.",
        "在服务器频道中，请 @我 或回复我的消息。",
        "Discord: added to /help.",
    ),
    "discord_ask_help": (
        (),
        "You can also use the /ask command.",
        "也可以使用 /ask 命令。",
        "Discord: added to /help when the /ask command is offered.",
    ),
    "telegram_help": (
        (),
        "In groups, mention me or reply to one of my messages.",
        "在群组中，请 @我 或回复我的消息。",
        "Telegram: added to /help.",
    ),
    "slack_help": (
        (),
        "In channels, mention me; I answer in the thread and keep the thread's context.",
        "在频道中请 @我；我会在消息串中回答，并记住该消息串的上下文。",
        "Slack: added to /help.",
    ),
}

#: Units of `{wait}` per locale: seconds, minutes, hours.
_UNITS = {"en": (" s", " min", " h"), "zh": (" 秒", " 分钟", " 小时")}


def placeholders(text: str) -> set[str]:
    """The `{name}` fields of a text (ValueError for a malformed one such as a lone `{`)."""
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


def check(name: str, text: str) -> str:
    """`text`, or ValueError unless it is well formed for `name` and uses only its placeholders."""
    allowed = TABLE[name][0]
    try:
        used = placeholders(text)
    except ValueError as e:
        raise ValueError(f"{e} (a literal brace is written {{{{ or }}}})") from None
    unknown = sorted(used - set(allowed))
    if unknown:
        valid = ", ".join(f"{{{p}}}" for p in allowed) or "none"
        raise ValueError(f"unknown placeholder {{{unknown[0]}}} (valid here: {valid})")
    return text


def _check_field(value: str | None, info: ValidationInfo) -> str | None:
    return None if value is None else check(str(info.field_name), value)


#: `texts:` of a platform or channel: any entry of the bundle, overridden.
TextsConfig: Any = create_model(  # type: ignore[call-overload]
    "TextsConfig",
    __config__=ConfigDict(extra="forbid", frozen=True),
    __validators__={"_placeholders": field_validator("*")(_check_field)},
    **{name: (str | None, Field(None, description=row[3])) for name, row in TABLE.items()},
)


class Texts:
    """One language's texts with overrides applied; `say(name, **values)` fills placeholders."""

    __slots__ = ("_values", "locale")

    def __init__(self, locale: str, values: Mapping[str, str]) -> None:
        self.locale = locale
        self._values = dict(values)

    def over(self, overrides: Any) -> Texts:
        """These texts with the entries a `TextsConfig` (or mapping) sets replaced. Called per
        platform message with the channel's `texts:`: one that sets nothing costs a set lookup."""
        if overrides is None:
            return self
        if isinstance(overrides, Mapping):
            changed = {k: v for k, v in overrides.items() if v is not None}
        else:  # only the fields the config set (no dump of every field)
            values = ((k, getattr(overrides, k)) for k in overrides.model_fields_set)
            changed = {k: v for k, v in values if v is not None}
        return Texts(self.locale, {**self._values, **changed}) if changed else self

    def say(self, name: str, **values: Any) -> str:
        return self._values[name].format(**values)

    def __getitem__(self, name: str) -> str:
        return self.say(name)

    def wait(self, seconds: float) -> str:
        """`42 s` / `42 秒`: how long until a window ends, in this language."""
        s, m, h = _UNITS.get(self.locale, _UNITS["en"])
        if seconds < 90:
            return f"{max(1, math.ceil(seconds))}{s}"
        if seconds < 5400:
            return f"{math.ceil(seconds / 60)}{m}"
        return f"{math.ceil(seconds / 3600)}{h}"


BUNDLES: dict[str, Texts] = {
    "en": Texts("en", {name: row[1] for name, row in TABLE.items()}),
    "zh": Texts("zh", {name: row[2] for name, row in TABLE.items()}),
}


def bundle(locale: str | None) -> Texts:
    return BUNDLES.get(locale or "en", BUNDLES["en"])


for _name, _row in TABLE.items():  # the built-in bundles obey their own rules
    check(_name, _row[1])
    check(_name, _row[2])
