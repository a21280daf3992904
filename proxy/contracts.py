"""The three extension contracts: Provider, Store, Platform.

The core talks only to these. Concrete classes are found by config `kind` through the entry-point
groups `switchboard.providers`, `switchboard.platforms` and `switchboard.stores` (see
pyproject.toml), so the core never imports one.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import aiohttp
from pydantic import BaseModel, ConfigDict

from proxy.probe import ProbeOutcome, ProbeResult
from proxy.texts import Locale, Texts, TextsConfig, bundle
from proxy.types import (
    JSON,
    ChatRequest,
    Completion,
    Delta,
    Embeddings,
    EmbedRequest,
    ImageRequest,
    Inbound,
    Message,
    TranscribeRequest,
    WebRequest,
    WebResponse,
)


class AdapterConfig(BaseModel):
    """Base of every provider/platform config block. Unknown keys are an error (typos)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    kind: str


class PlatformConfig(AdapterConfig):
    """Base of every platform config block: what every platform has, the bot's language."""

    #: The locale of a platform whose `locale` is unset (`zh` where users mostly write Chinese).
    default_locale: ClassVar[str] = "en"
    locale: Locale | None = None
    """Language of the bot's own texts (help, apologies, notices): `en` or `zh`; unset: the kind's default."""
    texts: TextsConfig = TextsConfig()  # type: ignore[valid-type]
    """Single texts of the bundle replaced on this platform (see the Texts section of the README)."""
    admins: list[str] = []
    """User ids (as the platform sends them) who may use /reload, /status and /usage in chat."""

    def language(self) -> str:
        return self.locale or self.default_locale

    def channel_refs(self) -> dict[str, str]:
        """Channels this block names (key path under the block, e.g. `menus.V1001.channel` ->
        channel name); the config fails to load when one of them does not exist."""
        return {}


# ----------------------------------------------------------------------------------- providers


class ProviderState(Protocol):
    """Provider-private state for one (conversation, provider), kept in the store.

    Dify keeps its `conversation_id` here. It survives restarts and is dropped by `/clear`.
    """

    async def get(self) -> JSON | None: ...

    async def set(self, value: JSON | None) -> None: ...


class Provider(abc.ABC):
    """A backend. Turns a ChatRequest into an upstream call and yields deltas.

    Providers raise `proxy.errors.ProviderError` subclasses and never retry or fail over on
    their own: that is the core's job. They must not log or raise secrets.
    """

    config_model: ClassVar[type[AdapterConfig]]
    #: Optional packages this provider imports, each with the extra that installs it. When one is
    #: missing the provider is disabled at config load, with the install command as the reason.
    requires: ClassVar[dict[str, str]] = {}

    def __init__(self, name: str, config: Any, http: aiohttp.ClientSession) -> None:
        self.name = name
        self.config = config
        self.http = http

    @property
    def default_model(self) -> str | None:
        """The model this provider uses when the channel does not override it."""
        return getattr(self.config, "model", None)

    async def start(self) -> None:
        """Called once at start-up (after config validation). Heavy imports go here."""

    async def close(self) -> None:
        """Called once at shutdown."""

    @abc.abstractmethod
    def stream(self, request: ChatRequest, state: ProviderState) -> AsyncIterator[Delta]:
        """Yield the answer as deltas. Errors before the first delta may be retried/failed over."""

    #: Whether the provider passes `tools` on (a request with tools skips providers that cannot).
    uses_tools: ClassVar[bool] = True
    #: Whether the provider passes image parts on (a request with images skips providers that cannot).
    sees_images: ClassVar[bool] = True
    #: Whether `embed` is implemented (the embeddings door skips providers that cannot).
    embeds: ClassVar[bool] = False
    #: Whether `draw` is implemented (the images door skips providers that cannot).
    draws: ClassVar[bool] = False
    #: Whether `transcribe` is implemented (the audio door skips providers that cannot).
    transcribes: ClassVar[bool] = False
    #: Whether `moderate` is implemented (a channel's `moderation.provider` must be such a provider).
    moderates: ClassVar[bool] = False

    async def moderate(self, text: str) -> bool:
        """Does the upstream's moderation flag `text`?"""
        raise NotImplementedError(f"{type(self).__name__} does not moderate")

    async def transcribe(self, request: TranscribeRequest) -> tuple[str, bytes]:
        """The transcription as the upstream sent it: (content type, body)."""
        raise NotImplementedError(f"{type(self).__name__} does not transcribe")

    async def draw(self, request: ImageRequest) -> list[JSON]:
        """The images API's `data` items (`url` or `b64_json`, maybe `revised_prompt`)."""
        raise NotImplementedError(f"{type(self).__name__} does not generate images")

    async def embed(self, request: EmbedRequest) -> Embeddings:
        """Vectors for `request.inputs` (only when `embeds`)."""
        raise NotImplementedError(f"{type(self).__name__} does not embed")

    async def complete(self, request: ChatRequest, state: ProviderState) -> Completion:
        """The whole answer at once. Default: collect `stream()`; override when the upstream has
        a cheaper non-streaming call."""
        text: list[str] = []
        finish, usage, tools = "stop", None, None
        images: tuple[str, ...] = ()
        async for d in self.stream(request, state):
            if d.replace:
                text = [d.text]
            elif d.text:
                text.append(d.text)
            finish = d.finish_reason or finish
            usage = d.usage or usage
            tools = d.tool_calls or tools
            images = images + d.images
        return Completion("".join(text), finish, usage, tools, request.model, images)

    def describe(self) -> str:
        """One line for `switchboard check` (never includes secrets)."""
        return f"{self.config.kind}"

    def key_status(self) -> list[dict[str, object]]:
        """Per API key, masked, its health (`key`, `state`, `in_flight`): for the status page.
        Default: nothing (no keys, or nothing to tell)."""
        return []

    def share_health(self, announce: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], bool] | None:
        """Instances sharing a store share what they learn about upstream keys (proxy/shared_health.py).
        The provider calls `announce(news)` (JSON, never a secret) when it learns something the other
        instances should know (a key disabled, or cooling down until a time); it returns the function
        that applies another instance's news (False: not about this provider's keys). Default: None,
        nothing to share."""
        return None

    async def probe(self) -> list[ProbeResult]:
        """`switchboard check --live`: the cheapest real call to the upstream, per key (e.g.
        `GET /models`), within `proxy.probe.PROBE_SECONDS`; one result per key, keys masked.
        Called after `start()`. Never raises for an upstream failure: that is a result. Calls only
        what the config points at, and spends nothing (no generation). Default: nothing to probe."""
        return [ProbeResult("-", ProbeOutcome.NOT_PROBED, f"{self.config.kind} has no probe")]


# --------------------------------------------------------------------------------------- store


class ClaimState(enum.StrEnum):
    """What `Store.claim_lease` found."""

    NEW = "new"  #: never seen: the caller owns it now
    TAKEN_OVER = "taken_over"  #: claimed before, its lease ran out unanswered: the caller owns it now
    IN_FLIGHT = "in_flight"  #: another owner's lease (or the caller's own) is live: leave it
    DONE = "done"  #: answered (settled) within the dedupe ttl: drop it


@dataclass(frozen=True, slots=True)
class Claim:
    """The result of `Store.claim_lease`. True when the caller owns the key (NEW, TAKEN_OVER);
    `payload` is what the previous owner stored (TAKEN_OVER only)."""

    state: ClaimState
    payload: str | None = None

    def __bool__(self) -> bool:
        return self.state in (ClaimState.NEW, ClaimState.TAKEN_OVER)


@dataclass(frozen=True, slots=True)
class Hit:
    """The result of `Store.hit`: was the amount counted, what is left of the limit in this
    window, and the seconds until the window ends (when the count starts again from zero)."""

    allowed: bool
    remaining: int
    retry_after: float


@dataclass(slots=True)
class UsageRow:
    """Tokens spent in one hour (`hour`: its start, epoch seconds) by one combination of channel,
    provider, model, API key name, platform and platform user ("" where none applies): what
    `Store.add_usage` adds up and `Store.usage` returns. `estimated` counts the requests whose
    figures Switchboard estimated because the upstream reported none."""

    hour: int
    channel: str
    provider: str
    model: str
    key: str
    platform: str
    user: str
    prompt: int = 0
    completion: int = 0
    requests: int = 0
    estimated: int = 0

    def dims(self) -> tuple[str, str, str, str, str, str]:
        return (self.channel, self.provider, self.model, self.key, self.platform, self.user)


class Store(abc.ABC):
    """Persistent state: transcripts, provider state, processed-event ids, small values.

    `conversation` keys are opaque strings built by the core (channel + session).

    Leased claims ("a crash loses no message"). A platform message is claimed with
    `claim_lease(key, owner=, lease=, ttl=)`: the owner (one id per Switchboard process) holds it
    for `lease` seconds and keeps it with `renew` (a heartbeat) while it generates and delivers,
    storing an opaque `payload` on it (the message, delivery notes, the finished answer). When the
    answer is delivered (or delivery failed for good) the owner calls `settle(key, ttl)`: from then
    on the key is DONE for `ttl` seconds. A claim whose lease ran out unsettled (the process was
    killed, or lost) is TAKEN_OVER by the next `claim_lease` of that key, which gets the payload,
    and `expired_claims` lists such claims so a recovery loop can answer them although the platform
    never retries. Each call is atomic (SQLite: one IMMEDIATE transaction; Redis: one Lua script).
    A claim lives `ttl` seconds from its creation, settled or not.

    SQLite and memory stores serve one Switchboard process (`shared = False`): at start-up
    `release_others(owner)` ends every lease of an earlier boot at once, so a platform retry that
    reaches the restarted process is answered now instead of waiting for a dead owner's lease.
    A shared store (Redis, several instances) cannot tell a dead owner from a live one and lets
    leases run out.

    Rate limits and budgets (`proxy/limiter.py`) count with `hit` in fixed windows aligned to the
    clock (the store's clock: Redis's for Redis), so every instance agrees on when a window ends,
    and hold concurrency slots with `acquire`/`release`, leased so a crashed instance's slots run
    out by themselves. Both are atomic, one round trip each.
    """

    #: Several Switchboard instances may use this store at once.
    shared: ClassVar[bool] = False

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the store answers (readiness)."""

    @abc.abstractmethod
    async def history(self, conversation: str, turns: int) -> list[Message]:
        """The last `turns` exchanges (a user message and what followed it), oldest first."""

    @abc.abstractmethod
    async def append(self, conversation: str, messages: list[Message]) -> None: ...

    @abc.abstractmethod
    async def clear(self, conversation: str) -> None:
        """Forget the transcript and every provider state of this conversation."""

    @abc.abstractmethod
    async def get_state(self, conversation: str, provider: str) -> JSON | None: ...

    @abc.abstractmethod
    async def set_state(self, conversation: str, provider: str, value: JSON | None) -> None: ...

    @abc.abstractmethod
    async def claim(self, key: str, ttl: float) -> bool:
        """Atomically record `key`; True only the first time within `ttl` seconds (a plain
        once-only marker; platform messages use `claim_lease`)."""

    @abc.abstractmethod
    async def claim_lease(self, key: str, *, owner: str, lease: float, ttl: float, payload: str | None = None) -> Claim:
        """Claim `key` for `owner` for `lease` seconds (see the class docstring). A NEW claim stores
        `payload`; a TAKEN_OVER one keeps and returns the stored payload."""

    @abc.abstractmethod
    async def renew(self, key: str, *, owner: str, lease: float, payload: str | None = None) -> bool:
        """Extend `owner`'s unsettled lease to `lease` seconds from now, replacing the payload when
        one is given. False when `owner` no longer holds the key (taken over, settled, gone)."""

    @abc.abstractmethod
    async def settle(self, key: str, ttl: float, *more: str) -> None:
        """Mark `key` (and the `more` keys, at once) answered: DONE for `ttl` seconds from now;
        the payload is dropped."""

    @abc.abstractmethod
    async def expired_claims(self, prefix: str, limit: int) -> list[tuple[str, str | None]]:
        """Up to `limit` unsettled claims under `prefix` whose lease has run out: (key, payload)."""

    @abc.abstractmethod
    async def release_others(self, owner: str) -> int:
        """Single-instance stores: end the live leases of every other owner (an earlier boot of
        this process, dead by definition); how many. Shared stores do nothing and return 0."""

    @abc.abstractmethod
    async def hit(self, key: str, amount: int, window: float, limit: int) -> Hit:
        """Count `amount` on `key` in the current `window`-second window if the count stays
        within `limit`; nothing is counted when it would not. `amount` 0 only asks whether one
        more fits (count < limit). Windows start at multiples of `window` since the epoch."""

    @abc.abstractmethod
    async def acquire(self, key: str, token: str, limit: int, lease: float) -> bool:
        """Take one of `limit` slots of `key` as `token` for at most `lease` seconds; False when
        all are taken. Slots whose lease ran out (a crashed holder) are free again."""

    @abc.abstractmethod
    async def release(self, key: str, token: str) -> None:
        """Give back the slot `token` holds (nothing when it has run out)."""

    @abc.abstractmethod
    async def put(self, key: str, value: str, ttl: float | None = None) -> None: ...

    # -- usage (proxy/usage.py) ------------------------------------------------------------------

    @abc.abstractmethod
    async def add_usage(self, rows: list[UsageRow]) -> None:
        """Add each row's counts to its stored hour bucket (created when new). Buckets are kept
        `proxy.usage.RETENTION` seconds."""

    @abc.abstractmethod
    async def usage(self, since: float) -> list[UsageRow]:
        """Every bucket from the hour holding `since` (epoch seconds) on."""

    # -- the bus between instances (proxy/bus.py) ------------------------------------------------

    async def publish(self, message: str) -> None:
        """Send `message` to every instance listening on this store, this one included.
        Single-instance stores have nobody to tell: nothing happens. Raises when the store is down."""
        return None

    def listen(self) -> AsyncIterator[str] | None:
        """The messages published on this store, as they arrive: an endless iterator whose first
        item is "" once it is subscribed, and which raises when the store goes away (the bus opens
        it again). None: nothing to listen to (one instance)."""
        return None

    @abc.abstractmethod
    async def get(self, key: str) -> str | None: ...

    @abc.abstractmethod
    async def delete(self, key: str) -> None: ...


# ----------------------------------------------------------------------------------- platforms


class Answer(Protocol):
    """The answer to one inbound message, as the core hands it to `Platform.deliver`.

    Iterate it for text deltas as they arrive (`async for piece in answer`). If every provider
    failed, the only piece is a short apology and `failed` is True; if the answer broke off
    midway, the last piece says so. Fixed replies (/help, /clear, unsupported types) arrive as
    a single piece. After iteration, `text` is the whole answer as the user should see it
    (a `replace` from the backend already applied), `images` the generated image URLs,
    `replaced` is True when the backend replaced what was streamed, `stopped` when
    `Job.stop()` ended it early.
    """

    text: str
    images: tuple[str, ...]
    failed: bool
    stopped: bool
    replaced: bool

    def __aiter__(self) -> AsyncIterator[str]: ...


class Job(Protocol):
    """A submitted inbound message being answered in the background."""

    msg: Inbound

    def stop(self) -> None:
        """Stop generating: the upstream stream is closed and the answer ends `stopped`."""

    def done(self) -> bool: ...

    def wait(self) -> Awaitable[str]:
        """Wait until `deliver` returned; the final text."""


class Broadcast(Protocol):
    """The bus between instances sharing a store (`proxy/bus.py`), as adapters see it. Name
    topics after the adapter (`f"{self.name}:stop"`) so two platforms of one kind do not mix."""

    @property
    def active(self) -> bool:
        """Are there other instances (a shared store)? When not, nothing needs publishing."""

    def on(self, topic: str, handler: Callable[[dict[str, Any]], Awaitable[None] | None]) -> None:
        """Run `handler(data)` for each message on `topic` published by another instance."""

    async def publish(self, topic: str, data: dict[str, Any]) -> bool:
        """Tell the other instances (best effort: False when the store is down; never raises)."""


class PlatformContext(Protocol):
    """What the core gives every platform adapter."""

    http: aiohttp.ClientSession
    store: Store
    #: The other instances sharing the store (a stop pressed there, an answer made there).
    bus: Broadcast

    async def claim(self, key: str) -> Claim:
        """Persistent dedupe, leased (see `Store`): true (NEW, TAKEN_OVER) when this message is
        ours to answer now, false when it was answered (DONE) or is being answered (IN_FLIGHT).
        Claim the message's `event_id` and each of its `extra_keys`; `submit` (or `settle`) then
        owns them."""

    async def accept(self, platform: Platform, msg: Inbound) -> Job | None:
        """Claim `msg` (its `event_id` and `extra_keys`) and `submit` it; None when any of them
        was answered or is being answered (a duplicate). What adapters use, so none can forget
        to dedupe."""

    def submit(self, platform: Platform, msg: Inbound) -> Job:
        """Only for a message whose `event_id` this context just claimed (else RuntimeError):
        answer `msg` in the background (commands, routing, history, failover) and call
        `platform.deliver(msg, answer)`. Returns at once. The message is stored on its claim and
        its lease kept alive until delivery ends; then the claim is settled. If the process dies
        first, the message is answered again by whichever process takes the claim over."""

    async def note(self, msg: Inbound, **fields: Any) -> None:
        """Record delivery state on the claim of `msg` (JSON values), for a process that has to
        finish this delivery after a crash: it finds them in `msg.recovered`. Await it before
        relying on it (e.g. note a placeholder's id before streaming into it)."""

    async def settle(self, key: str) -> None:
        """Mark a claimed key answered without `submit` (a reply the adapter sent itself)."""

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Run platform-side background work (tracked, failures logged, drained at shutdown)."""


class Platform(abc.ABC):
    """One inbound chat protocol, served at `/hooks/{name}` (and/or over a connection).

    For every webhook request the core calls `handle`, which runs the adapter's `verify` (on the
    raw bytes: constant time, replay window via `proxy.verify.within_window`) and only then its
    `receive` (parse → dedupe with `ctx.claim` → `ctx.submit` → the acknowledgement within the
    platform's deadline). So no adapter can answer a request it did not verify. Verification
    failures raise `VerificationError`; malformed bodies `RequestError`.
    """

    config_model: ClassVar[type[AdapterConfig]]
    #: Seconds the platform waits for a webhook's answer before it counts it failed (and retries):
    #: a slower acknowledgement is counted as a deadline miss. None: no such deadline (or the
    #: adapter holds requests open on purpose, as WeChat's passive replies do).
    ack_deadline: ClassVar[float | None] = None

    def __init__(self, name: str, config: Any, ctx: PlatformContext) -> None:
        self.name = name
        self.config = config
        self.ctx = ctx
        #: The bot's own texts on this platform (its locale's bundle and `texts:` overrides);
        #: a channel's `texts:` go over these for the messages it answers.
        self.texts: Texts = (
            bundle(config.language()).over(config.texts) if isinstance(config, PlatformConfig) else bundle("en")
        )

    async def start(self) -> None:
        """Called once at start-up (fetch bot identity, warm tokens...)."""

    async def close(self) -> None:
        """Called once at shutdown, after in-flight replies were drained."""

    async def handle(self, request: WebRequest) -> WebResponse:
        """A webhook request: verified, then received. Not overridden by adapters."""
        self.verify(request)
        return await self.receive(request)

    @abc.abstractmethod
    def verify(self, request: WebRequest) -> None:
        """Raise `VerificationError` unless the request comes from the platform (signature or
        token, compared in constant time; the timestamp within the replay window). A request the
        adapter does not take at all (wrong method, a connection-only mode) may be refused here
        with `RequestError` / `VerificationError` too."""

    @abc.abstractmethod
    async def receive(self, request: WebRequest) -> WebResponse:
        """A verified request: parse, dedupe, submit, acknowledge."""

    @abc.abstractmethod
    async def deliver(self, msg: Inbound, answer: Answer) -> None:
        """Send the answer to the chat (streamed edits where the platform allows)."""

    def help_text(self) -> str | None:
        """Platform-specific additions to the /help answer."""
        return None

    async def setup(self) -> str | None:
        """`switchboard setup`: register with the platform what it needs to know of us (a
        webhook URL, slash commands); a line saying what was done. None: nothing to set up."""
        return None

    async def context(self, msg: Inbound, exchanges: int) -> Sequence[Message] | None:
        """The conversation before `msg` as the platform knows it (e.g. a Slack thread's earlier
        messages, other people's included), at most about `exchanges` user/assistant pairs,
        oldest first; used instead of the stored transcript. None (the default): the stored
        transcript. Called while answering, not before the acknowledgement."""
        return None

    # -- connection modes (proxy/connections.py) ---------------------------------------------

    def connects(self) -> bool:
        """Does this adapter hold an outbound connection (as configured)? Then the core runs
        `connection` under a supervisor that makes it again whenever it ends."""
        return False

    async def connection(self, up: Callable[[], None]) -> None:
        """Hold one connection to the platform: call `up()` once it is accepted, handle what
        arrives (acknowledging each event only after it was claimed and submitted), and return
        or raise when the connection ends."""
        raise NotImplementedError

    # -- recovery: answering a message whose first attempt died with its process ---------------

    def dump_reply_to(self, reply_to: Any) -> Any:
        """`Inbound.reply_to` as JSON, to be stored on the message's claim. Default: as it is."""
        return reply_to

    def load_reply_to(self, data: Any) -> Any:
        """The inverse of `dump_reply_to`; raise ValueError when the stored target must not be
        used any more (the message is then logged and dropped)."""
        return data

    def resumable(self, msg: Inbound, claimed_at: float) -> bool:
        """Can `msg`, claimed at `claimed_at` (epoch seconds) by a process that died before
        answering, still be answered now? Default: yes (replies go by ids that stay valid).
        Say in the adapter's docstring what happens to such a message."""
        return True
