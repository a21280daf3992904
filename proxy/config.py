"""config.yaml: interpolation, validation, and the resolved route table.

`load_config(path)` returns a `Settings` or raises `ConfigError` naming the path
(`channels[1].providers[0]`), what is wrong and what would be valid. A provider or platform
whose block uses an unset `${VAR}` (no default) is not an error: it is *disabled*, with the
reason kept for one log line, and channels skip it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from proxy.contracts import AdapterConfig, PlatformConfig
from proxy.errors import ConfigError
from proxy.limits import NO_LIMITS, Limits, LimitsConfig, compile_limits
from proxy.moderation import Moderation, ModerationConfig
from proxy.registry import Registry
from proxy.texts import TextsConfig

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    """Address `serve` listens on (`0.0.0.0` or `::` for every interface)."""
    port: int = Field(8080, ge=0, le=65535)
    """TCP port `serve` listens on (0: any free port)."""
    max_body_bytes: int = Field(1_048_576, ge=1024)
    """Largest request body accepted, in bytes; a larger one is answered 413."""
    max_upload_bytes: int = Field(26_214_400, ge=1024)
    """Largest audio upload `POST /v1/audio/transcriptions` takes, in bytes (OpenAI's limit: 25 MB)."""
    max_concurrent_generations: int = Field(64, ge=1)
    """Background generations for platform messages running at once."""
    drain_seconds: float = Field(30.0, ge=0)
    """How long shutdown waits for in-flight replies."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log verbosity of the `switchboard` loggers (a reload applies it)."""
    log_format: Literal["text", "json"] = "text"
    """`text` lines for people, or `json`: one object per line (`ts`, `level`, `logger`, then `event` and its fields,
    or `msg`), for a log pipeline. Written by a thread of its own, never by the event loop."""
    log_content: bool = False
    """Log message contents (prompts and answers) in the per-request lines. Off: only sizes and counts."""
    dedupe_ttl: float = Field(48 * 3600, gt=0)
    """How long processed platform event ids are remembered (Feishu retries for ~7 h)."""
    claim_lease: float = Field(30.0, ge=0.5, le=3600)
    """Seconds a process holds a platform message it is answering without renewing its claim; it renews every third of
    that. A message whose claim ran out unanswered (a crash, a kill) is answered by the next process that sees it,
    or by the recovery sweep (every half lease)."""
    recover_within: float = Field(3600.0, gt=0)
    """Messages claimed longer ago than this are not answered by recovery, only logged."""

    @field_validator("claim_lease")
    @classmethod
    def _lease_within_ttl(cls, v: float, info: ValidationInfo) -> float:
        if v >= info.data.get("dedupe_ttl", float("inf")):
            raise ValueError("must be shorter than server.dedupe_ttl")
        return v

    gc_threshold: int = Field(2_000, ge=0)
    """`serve` only: Python's gen-0 garbage-collection threshold (0 keeps Python's defaults). With the start-up heap
    frozen out of collections and this above Python's 700, request churn no longer triggers collections; kept small,
    each pass stays short when many streams are open (pause times and throughput measured in BENCHMARKS.md)."""
    header_timeout: float = Field(10.0, gt=0, le=300)
    """Seconds a connection has to send a request's line and headers, counted from when it opened or its previous
    response ended; then 408 and closed (slow-loris guard; `serve` only)."""
    body_timeout: float = Field(30.0, gt=0, le=3600)
    """Seconds a request body has to arrive once the handler starts reading it; then 408."""
    watch_config: bool = False
    """Reload the config when its file (or a `prompt_file` next to it) changes, as SIGHUP and
    `POST /admin/reload` do."""


class StoreConfig(_Strict):
    url: str = "sqlite:///data/switchboard.db"
    """Where conversations, dedupe marks and claims live: `sqlite:///path` (relative to the working directory),
    `memory://` (one process, lost on restart) or `redis://host:6379/0` (shared by several instances)."""

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if "://" not in v:
            raise ValueError("must look like sqlite:///path, memory:// or redis://host:6379/0")
        return v

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0]


class KeyConfig(_Strict):
    key: str = Field(min_length=1)
    """The bearer token an OpenAI-API caller sends (`Authorization: Bearer …`); keep it in a `${VAR}`."""
    channels: list[str] = ["*"]
    """Channels (by name) this key may use as `model`; `"*"`: every channel."""
    name: str | None = None
    """A label for logs, metrics and `limits.keys` (default: `keys[N]`); never the key itself."""
    dify_channel: str | None = None
    """The channel Dify Service API requests (`/dify/v1/...`) with this key go to; unset: the key's only channel
    when it names exactly one. A Dify app key is an entry of its own with this set."""

    def allows(self, channel: str) -> bool:
        return "*" in self.channels or channel in self.channels


class AdminConfig(_Strict):
    keys: list[str] = []
    """Bearer keys for `/admin/*` (reload), separate from the API `keys`: an API key is not an
    admin key and an admin key is not an API key. An empty or unset one is left out; with none,
    `/admin/*` answers 403."""


class TracingConfig(_Strict):
    otlp_endpoint: str | None = None
    """OpenTelemetry traces (a span per upstream attempt, GenAI semantic conventions) go to this OTLP/HTTP collector,
    e.g. `http://127.0.0.1:4318` (spans are posted to `/v1/traces`). Unset: no tracing. Needs the `otel` extra."""
    service_name: str = "switchboard"
    """`service.name` of the spans."""


class FailoverConfig(_Strict):
    attempts: int = Field(2, ge=1, le=10)
    """Tries per provider for a retryable error (1 = no retry), before moving down the chain."""
    backoff_base: float = Field(0.25, ge=0)
    """Seconds before the first retry of a provider; doubles per retry (with jitter)."""
    backoff_max: float = Field(4.0, ge=0)
    """Longest wait between two retries, in seconds."""
    retry_after_max: float = Field(10.0, ge=0)
    """Longest Retry-After we wait for before failing over instead."""
    circuit_failures: int = Field(3, ge=1)
    """Consecutive failed requests that open a provider's circuit, and how long it stays open."""
    circuit_cooldown: float = Field(30.0, ge=0)
    """Seconds an open circuit skips the provider before one trial request goes through."""


StrList = str | list[str]


class MatchConfig(_Strict):
    platform: StrList | None = None
    """Platform name(s) (keys of `platforms`) whose messages this channel takes; unset: any."""
    chat: StrList | None = None
    """Chat / conversation id(s) this channel takes; unset: any."""
    user: StrList | None = None
    """Sender user id(s) this channel takes; unset: any."""
    prefix: StrList | None = None
    """Text prefixes (case-insensitive, stripped from the text), e.g. ["ai:", "gpt:"]."""
    direct: bool | None = None
    """true: direct messages only; false: group chats only; unset: both."""


class ChannelConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:\-/]+$")
    """Unique channel name; OpenAI-API callers send it as `model`."""
    match: MatchConfig = MatchConfig()
    """Which chat-platform messages this channel answers (every condition given must hold; the first matching channel
    wins)."""
    providers: list[str] = Field(min_length=1)
    """Provider names (keys of `providers`) in failover order; disabled ones are skipped."""
    prompt: str | None = None
    """System prompt put before the conversation."""
    prompt_file: str | None = None
    """File holding the system prompt, relative to the config file; not together with `prompt`."""
    model: str | None = None
    """Model name sent to the providers, overriding each provider's own `model`."""
    params: dict[str, Any] = {}
    """Generation parameter overrides (temperature, max_tokens, ...), applied over the caller's."""
    history: int = Field(10, ge=0, le=1000)
    """Exchanges of stored history sent with each turn (0 = none)."""
    session: Literal["user", "chat", "thread"] = "user"
    """Whose history a group-chat turn shares: `user` (per user), `chat` (the whole chat) or `thread` (per thread);
    direct chats are always per user."""
    description: str | None = None
    """Free text shown in `GET /v1/models` and `check`."""
    texts: TextsConfig = TextsConfig()  # type: ignore[valid-type]
    """The bot's own texts replaced for this channel's chat users (over the platform's locale and `texts:`)."""
    choosable: list[str] = []
    """Providers chat users may pick for their session with `/model NAME` (`/model` lists them; `/clear` forgets the
    choice); the chosen one is tried first, the channel's chain after it."""
    moderation: ModerationConfig | None = None
    """Block lists and/or a moderation provider for this channel's chat messages and answers (proxy/moderation.py)."""


class PriceConfig(_Strict):
    prompt: float = Field(ge=0)
    """Price of a million prompt (input) tokens, in the currency you report in."""
    completion: float = Field(ge=0)
    """Price of a million completion (output) tokens."""


class RawConfig(_Strict):
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    keys: list[KeyConfig] = []
    admin: AdminConfig = AdminConfig()
    """Admin keys for `/admin/*` (hot reload)."""
    failover: FailoverConfig = FailoverConfig()
    providers: dict[str, dict[str, Any]] = {}
    platforms: dict[str, dict[str, Any]] = {}
    channels: list[ChannelConfig] = []
    limits: LimitsConfig = LimitsConfig()
    """Requests per minute, tokens per day and concurrent generations per key, channel and chat-platform user
    (proxy/limits.py)."""
    tracing: TracingConfig = TracingConfig()
    """Optional OpenTelemetry traces (proxy/tracing.py); bound at start-up."""
    prices: dict[str, PriceConfig] = {}
    """Prices per model name (as the upstream reports it), for the cost column of `switchboard usage` and
    `/admin/usage`."""


@dataclass(frozen=True, slots=True)
class Adapter:
    """A configured provider or platform: its class and validated config, or why it is off."""

    name: str
    kind: str
    cls: type | None
    config: AdapterConfig | None
    disabled: str | None = None


@dataclass(frozen=True, slots=True)
class Channel:
    config: ChannelConfig
    prompt: str | None
    providers: tuple[str, ...]  # enabled providers, failover order
    skipped: tuple[str, ...]  # configured but disabled
    choosable: tuple[str, ...] = ()  # enabled providers users may pick with /model
    moderation: Moderation | None = None

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class Settings:
    raw: RawConfig
    providers: dict[str, Adapter]
    platforms: dict[str, Adapter]
    channels: tuple[Channel, ...]
    path: Path | None = None
    by_name: dict[str, Channel] = field(default_factory=dict)
    limits: Limits = NO_LIMITS

    def __post_init__(self) -> None:
        self.by_name.update({c.name: c for c in self.channels})


# ------------------------------------------------------------------------------ interpolation


def interpolate(node: Any, env: Mapping[str, str], path: str, missing: dict[str, set[str]]) -> Any:
    """Expand ${VAR} and ${VAR:-default} in every string; record unset variables by path."""
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            value = env.get(name)
            if value:
                return value
            if default is not None:
                return default
            missing.setdefault(path, set()).add(name)
            return ""

        return _VAR.sub(sub, node)
    if isinstance(node, dict):
        return {k: interpolate(v, env, f"{path}.{k}" if path else str(k), missing) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, f"{path}[{i}]", missing) for i, v in enumerate(node)]
    return node


def _missing_under(prefix: str, missing: dict[str, set[str]]) -> list[str]:
    names: set[str] = set()
    for p, vs in missing.items():
        if p == prefix or p.startswith(prefix + ".") or p.startswith(prefix + "["):
            names |= vs
    return sorted(names)


# ---------------------------------------------------------------------------------- validation


def _loc(prefix: str, loc: Iterable[Any]) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _raise_validation(prefix: str, err: ValidationError) -> None:
    first = err.errors()[0]
    msg = first["msg"]
    valid = None
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "literal_error":
        msg, valid = "is not one of the choices", first.get("ctx", {}).get("expected")
    elif first["type"] == "value_error":  # a validator's own words, without pydantic's prefix
        msg = msg.removeprefix("Value error, ")
    elif first["type"] == "missing":
        msg = "is required"
    raise ConfigError(_loc(prefix, first["loc"]), msg, valid)


def _adapters(
    group: str, blocks: dict[str, dict[str, Any]], registry: Registry, missing: dict[str, set[str]]
) -> dict[str, Adapter]:
    out: dict[str, Adapter] = {}
    for name, block in blocks.items():
        path = f"{group}.{name}"
        if not isinstance(block, dict):
            raise ConfigError(path, "must be a mapping with a `kind`")
        kind = block.get("kind")
        if not kind:
            raise ConfigError(f"{path}.kind", "is required", ", ".join(registry.kinds()))
        if kind not in registry.kinds():
            raise ConfigError(f"{path}.kind", f"unknown kind {kind!r}", ", ".join(registry.kinds()))
        unset = _missing_under(path, missing)
        if unset:  # disabled: not even imported
            reason = f"{', '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set"
            out[name] = Adapter(name, kind, None, None, disabled=reason)
            continue
        try:
            cls = registry.get(kind)
        except Exception as e:  # an adapter whose module fails to import
            raise ConfigError(f"{path}.kind", f"kind {kind!r} could not be loaded: {type(e).__name__}: {e}") from None
        try:
            config = cls.config_model.model_validate(block)
        except ValidationError as e:
            _raise_validation(path, e)
        absent = [m for m, extra in getattr(cls, "requires", {}).items() if importlib.util.find_spec(m) is None]
        if absent:  # an optional dependency this install left out: off, with how to add it
            extras = ",".join(sorted({cls.requires[m] for m in absent}))
            reason = f"needs {', '.join(absent)} (make run EXTRAS={extras}, or pip install -e '.[{extras}]')"
            out[name] = Adapter(name, kind, None, None, disabled=reason)
            continue
        out[name] = Adapter(name, kind, cls, config)
    return out


def _channel(
    i: int, ch: ChannelConfig, providers: dict[str, Adapter], platforms: dict[str, Adapter], base: Path
) -> Channel:
    path = f"channels[{i}]"
    for j, p in enumerate(ch.providers):
        if p not in providers:
            raise ConfigError(
                f"{path}.providers[{j}]", f"unknown provider {p!r}", ", ".join(providers) or "none configured"
            )
    plats = ch.match.platform
    for j, p in enumerate([plats] if isinstance(plats, str) else plats or []):
        if p not in platforms and p != "openai":
            where = f"{path}.match.platform" + (f"[{j}]" if isinstance(plats, list) else "")
            raise ConfigError(where, f"unknown platform {p!r}", ", ".join([*platforms, "openai"]))
    prompt = ch.prompt
    if ch.prompt_file:
        if ch.prompt:
            raise ConfigError(f"{path}.prompt_file", "give either prompt or prompt_file, not both")
        file = (base / ch.prompt_file) if not os.path.isabs(ch.prompt_file) else Path(ch.prompt_file)
        try:
            prompt = file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"{path}.prompt_file", f"cannot read {file}: {e.strerror}") from None
    enabled = tuple(p for p in ch.providers if providers[p].disabled is None)
    skipped = tuple(p for p in ch.providers if providers[p].disabled is not None)
    for j, p in enumerate(ch.choosable):
        if p not in providers:
            raise ConfigError(f"{path}.choosable[{j}]", f"unknown provider {p!r}", ", ".join(providers))
    choosable = tuple(p for p in ch.choosable if providers[p].disabled is None)
    return Channel(ch, prompt, enabled, skipped, choosable, _moderation(path, ch.moderation, providers))


def _moderation(path: str, cfg: ModerationConfig | None, providers: dict[str, Adapter]) -> Moderation | None:
    if cfg is None:
        return None
    if cfg.provider is not None:
        adapter = providers.get(cfg.provider)
        if adapter is None:
            raise ConfigError(f"{path}.moderation.provider", f"unknown provider {cfg.provider!r}", ", ".join(providers))
        if adapter.cls is not None and not getattr(adapter.cls, "moderates", False):
            able = ", ".join(n for n, a in providers.items() if getattr(a.cls, "moderates", False)) or "none"
            why = f"{cfg.provider!r} (kind {adapter.kind}) cannot moderate"
            raise ConfigError(f"{path}.moderation.provider", why, able)
    try:
        return Moderation.compile(cfg)
    except ValueError as e:
        where, _, why = str(e).partition(": ")
        raise ConfigError(f"{path}.moderation.{where}", why) from None


def parse_config(
    data: Any,
    env: Mapping[str, str] | None = None,
    *,
    base: Path | None = None,
    providers: Registry | None = None,
    platforms: Registry | None = None,
) -> Settings:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("", "the config must be a YAML mapping at the top level")
    missing: dict[str, set[str]] = {}
    data = interpolate(data, os.environ if env is None else env, "", missing)
    for path in missing:
        if not (path.startswith(("providers.", "platforms.", "admin.keys["))):
            raise ConfigError(path, f"{', '.join(sorted(missing[path]))} is not set and has no default")
    _drop_unset_admin_keys(data, missing)
    try:
        raw = RawConfig.model_validate(data)
    except ValidationError as e:
        _raise_validation("", e)
    _admin_not_api(raw)
    prov = _adapters("providers", raw.providers, providers or Registry("switchboard.providers"), missing)
    plat = _adapters("platforms", raw.platforms, platforms or Registry("switchboard.platforms"), missing)
    seen: set[str] = set()
    channels = []
    for i, ch in enumerate(raw.channels):
        if ch.name in seen:
            raise ConfigError(f"channels[{i}].name", f"duplicate channel name {ch.name!r}")
        seen.add(ch.name)
        channels.append(_channel(i, ch, prov, plat, base or Path.cwd()))
    for name, adapter in plat.items():
        refs = adapter.config.channel_refs() if isinstance(adapter.config, PlatformConfig) else {}
        for where, ref in refs.items():
            if ref not in seen:
                names = ", ".join(c.name for c in channels) or "none"
                raise ConfigError(f"platforms.{name}.{where}", f"unknown channel {ref!r}", names)
    for i, k in enumerate(raw.keys):
        if k.dify_channel is not None and (k.dify_channel not in seen or not k.allows(k.dify_channel)):
            why = "names no channel" if k.dify_channel not in seen else "is not one of the key's channels"
            raise ConfigError(f"keys[{i}].dify_channel", f"{k.dify_channel!r} {why}")
    limits = compile_limits(raw.limits, key_ids(raw.keys), [c.name for c in channels], list(plat))
    return Settings(raw, prov, plat, tuple(channels), limits=limits)


def key_ids(keys: Iterable[KeyConfig]) -> list[tuple[str, str]]:
    """(id, label) of each API key: the front door's id (its `name`, else a digest prefix) and
    how limits, messages and metrics name it (its `name`, else `keys[N]`); never the secret."""
    return [
        (k.name or hashlib.sha256(k.key.encode()).hexdigest()[:12], k.name or f"keys[{i}]") for i, k in enumerate(keys)
    ]


def _drop_unset_admin_keys(data: dict[str, Any], missing: dict[str, set[str]]) -> None:
    """An admin key that is empty or names an unset variable is no key (admin stays off)."""
    admin = data.get("admin")
    if isinstance(admin, dict) and isinstance(keys := admin.get("keys"), list):
        admin["keys"] = [k for i, k in enumerate(keys) if f"admin.keys[{i}]" not in missing and k != ""]


def _admin_not_api(raw: RawConfig) -> None:
    api = {k.key for k in raw.keys}
    for i, key in enumerate(raw.admin.keys):
        if key in api:
            raise ConfigError(f"admin.keys[{i}]", "is also an API key; admin keys must differ from `keys`")


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Settings:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(p), f"cannot read config: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(str(p), f"not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    settings = parse_config(data, env, base=p.resolve().parent)
    return Settings(settings.raw, settings.providers, settings.platforms, settings.channels, p, limits=settings.limits)
