"""`limits:` in config.yaml: requests per minute, tokens per day and concurrent generations per
API key, per channel and per chat-platform user, compiled at config load into `Limits`.

```yaml
limits:
  keys:     {"*": {rpm: 60, tokens_per_day: 200000}, ci-bot: {rpm: 600}}
  channels: {gpt: {rpm: 600, concurrent: 20, message: "gpt is busy, try again in {wait}."}}
  users:    {"*": {rpm: 10, tokens_per_day: 50000}, "slack:U0123": {rpm: 100}}
  platforms: {wechat: {message: "您已达到使用上限，请 {wait} 后再试。"}}
```

`"*"` is every key / channel / user without an entry of its own; a named entry overrides only
the fields it sets (`rpm: null` lifts that limit). Each key, channel and user counts on its own
(`"*"` is a default, not a shared pool). Keys are named by their `name`, or `keys[N]` when they
have none — never by the secret. Users are `<platform name>:<user id>` and apply to chat-platform
messages only (on the OpenAI surface the key is the caller; its `user` field is the caller's
own choice).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from proxy.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class RuleConfig(_Strict):
    """The limits of one key, channel or user."""

    rpm: int | None = Field(None, ge=1)
    """Requests per `request_window` (a minute unless set)."""
    tokens_per_day: int | None = Field(None, ge=1)
    """Prompt + completion tokens (as the upstream reports them) per `token_window` (a day)."""
    concurrent: int | None = Field(None, ge=1)
    """Generations running at once."""
    request_window: float = Field(60.0, gt=0, le=86400)
    """Seconds `rpm` counts over; windows are aligned to the clock (a minute starts at :00)."""
    token_window: float = Field(86400.0, gt=0, le=366 * 86400)
    """Seconds `tokens_per_day` counts over (a UTC day unless set)."""
    message: str | None = None
    """What a chat-platform user reads when over this limit (channels and users; `{wait}` is the time until the window
    ends)."""


class PlatformLimitConfig(_Strict):
    message: str
    """The over-limit notice on this platform (`{wait}`: the time until the window ends)."""


class LimitsConfig(_Strict):
    keys: dict[str, RuleConfig] = {}
    """Limits per API key (by key `name`, or `keys[N]`; `"*"`: every key)."""
    channels: dict[str, RuleConfig] = {}
    """Limits per channel (by name; `"*"`: every channel), on every front door."""
    users: dict[str, RuleConfig] = {}
    """Limits per chat-platform user (`<platform>:<user id>`; `"*"`: every user)."""
    platforms: dict[str, PlatformLimitConfig] = {}
    """Over-limit notices per platform (by platform name), over the default `message`."""
    message: str | None = None
    """The over-limit notice a chat-platform user gets, once per window (`{wait}`: the time until the window ends);
    unset: the platform's `limited` text, in its language."""
    slot_lease: float = Field(300.0, gt=0, le=86400)
    """Seconds a concurrency slot outlives a crashed instance (shared stores only)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """The resolved limits of one key, channel or user. `name` labels it in messages and metrics
    (a key's name or `keys[N]`, a channel, `*` or a user entry), never a secret."""

    scope: str  # key | channel | user
    name: str
    rpm: int | None
    tokens: int | None
    concurrent: int | None
    request_window: float
    token_window: float
    message: str | None

    @property
    def empty(self) -> bool:
        return self.rpm is None and self.tokens is None and self.concurrent is None


class Target:
    """One rule applied to one counter (`who`: the key id, channel or `<platform>:<user>`), with
    its store keys spelled once."""

    __slots__ = ("rpm_key", "rule", "slot_key", "tok_key", "who")

    def __init__(self, rule: Rule, who: str) -> None:
        self.rule, self.who = rule, who
        base = f"rl:{rule.scope}:{who}"
        self.rpm_key, self.tok_key, self.slot_key = base + ":rpm", base + ":tok", base + ":slots"


@dataclass(frozen=True)
class Limits:
    """The compiled `limits:` block, kept in `Settings` (a reload brings its own)."""

    keys: Mapping[str, Rule] = field(default_factory=dict)  # by the front door's key id
    channels: Mapping[str, Rule] = field(default_factory=dict)
    users: Mapping[str, Rule] = field(default_factory=dict)  # "<platform>:<user id>"
    any_user: Rule | None = None
    message: str | None = None
    platform_messages: Mapping[str, str] = field(default_factory=dict)
    slot_lease: float = 300.0
    key_targets: Mapping[str, Target] = field(init=False, default_factory=dict)
    channel_targets: Mapping[str, Target] = field(init=False, default_factory=dict)

    @property
    def active(self) -> bool:
        return bool(self.keys or self.channels or self.any_user or any(not r.empty for r in self.users.values()))

    def __post_init__(self) -> None:  # a request finds its targets ready (the hot path)
        object.__setattr__(self, "key_targets", {k: Target(r, k) for k, r in self.keys.items()})
        object.__setattr__(self, "channel_targets", {c: Target(r, c) for c, r in self.channels.items()})

    def user(self, platform: str, user_id: str) -> Rule | None:
        rule = self.users.get(f"{platform}:{user_id}", self.any_user)
        return None if rule is None or rule.empty else rule

    def notice(self, rule: Rule, channel: Rule | None, platform: str) -> str | None:
        """The over-limit text for a chat user: the rule's own, the channel's, the platform's,
        then the default; None: none configured (the platform's `limited` text serves)."""
        return (
            rule.message
            or (channel.message if channel else None)
            or self.platform_messages.get(platform)
            or self.message
        )


NO_LIMITS = Limits()


def _rule(scope: str, name: str, own: RuleConfig | None, base: RuleConfig | None) -> Rule:
    merged: dict[str, Any] = base.model_dump() if base else RuleConfig().model_dump()
    if own is not None:
        merged.update({f: getattr(own, f) for f in own.model_fields_set})
    rule = Rule(
        scope,
        name,
        merged["rpm"],
        merged["tokens_per_day"],
        merged["concurrent"],
        merged["request_window"],
        merged["token_window"],
        merged["message"],
    )
    return rule


def _unknown(path: str, what: str, valid: Sequence[str]) -> ConfigError:
    return ConfigError(path, f"unknown {what}", ", ".join(['"*"', *valid]) or '"*"')


def compile_limits(
    cfg: LimitsConfig, keys: Sequence[tuple[str, str]], channels: Sequence[str], platforms: Sequence[str]
) -> Limits:
    """Resolve every rule at load. `keys` are (front door id, label) per configured key, in
    order; an entry naming no key, channel or platform is a config error."""
    labels = {label: kid for kid, label in keys}
    for name in cfg.keys:
        if name != "*" and name not in labels:
            raise _unknown(f"limits.keys.{name}", "key (keys are named by `name`, or keys[N])", list(labels))
    for name in cfg.channels:
        if name != "*" and name not in channels:
            raise _unknown(f"limits.channels.{name}", "channel", channels)
    for name in cfg.platforms:
        if name not in platforms:
            raise ConfigError(f"limits.platforms.{name}", "unknown platform", ", ".join(platforms) or "none configured")
    for name in cfg.users:
        platform, sep, user = name.partition(":")
        if name != "*" and not (sep and user):
            raise ConfigError(f"limits.users.{name}", "must be \"*\" or '<platform>:<user id>'", ", ".join(platforms))
        if name != "*" and platform not in platforms:
            raise ConfigError(
                f"limits.users.{name}", f"unknown platform {platform!r}", ", ".join(platforms) or "none configured"
            )
    key_rules = {kid: _rule("key", label, cfg.keys.get(label), cfg.keys.get("*")) for kid, label in keys}
    channel_rules = {ch: _rule("channel", ch, cfg.channels.get(ch), cfg.channels.get("*")) for ch in channels}
    any_user = cfg.users.get("*")
    user_rules = {name: _rule("user", name, own, any_user) for name, own in cfg.users.items() if name != "*"}
    default_user = _rule("user", "*", any_user, None)
    return Limits(
        {k: r for k, r in key_rules.items() if not r.empty},
        {c: r for c, r in channel_rules.items() if not r.empty},
        user_rules,  # empty ones too: a user's `rpm: null` lifts the "*" limit
        None if default_user.empty else default_user,
        cfg.message,
        {p: c.message for p, c in cfg.platforms.items()},
        cfg.slot_lease,
    )
