"""The engine: providers, store, failover and transcripts, shared by every front door.

Built from `Settings` without I/O; `start()` opens the HTTP client, the store and the providers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

import aiohttp

from proxy.bus import Bus
from proxy.config import Channel, Settings
from proxy.contracts import Provider, Store
from proxy.failover import Failover, Observer, Outcome
from proxy.limiter import Limiter
from proxy.limiter import Observer as LimitObserver
from proxy.registry import Registry
from proxy.shared_health import SharedHealth
from proxy.tracing import Tracing
from proxy.types import (
    JSON,
    ChatRequest,
    Completion,
    Delta,
    Embeddings,
    EmbedRequest,
    ImageRequest,
    Message,
    TranscribeRequest,
)
from proxy.usage import Recorder, TokenObserver

log = logging.getLogger("switchboard")


class StoredState:
    """ProviderState backed by the store, for one (conversation, provider)."""

    __slots__ = ("conversation", "provider", "store")

    def __init__(self, store: Store, conversation: str, provider: str) -> None:
        self.store, self.conversation, self.provider = store, conversation, provider

    async def get(self) -> JSON | None:
        return await self.store.get_state(self.conversation, self.provider)

    async def set(self, value: JSON | None) -> None:
        await self.store.set_state(self.conversation, self.provider, value)


class NoState:
    """ProviderState for requests without a conversation: nothing is kept."""

    async def get(self) -> JSON | None:
        return None

    async def set(self, value: JSON | None) -> None:
        return None


NO_STATE = NoState()


def open_store(url: str, registry: Registry | None = None) -> Store:
    scheme = url.split("://", 1)[0]
    reg = registry or Registry("switchboard.stores")
    cls = reg.get("redis" if scheme == "rediss" else scheme)
    if cls is None:
        from proxy.errors import ConfigError

        raise ConfigError("store.url", f"unknown store scheme {scheme!r}", "sqlite://, memory://, redis://")
    store: Store = cls(url)
    return store


class Engine:
    def __init__(
        self,
        settings: Settings,
        *,
        observe: Observer | None = None,
        limited: LimitObserver | None = None,
        tokens: TokenObserver | None = None,
        retried: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = open_store(settings.raw.store.url)
        #: News for and from the other instances on a shared store (circuits, keys, platforms).
        self.bus = Bus(self.store)
        #: Tokens spent, by hour and channel/provider/model/key/user, written to the store in batches.
        self.usage = Recorder(self.store, observe=tokens)
        #: Circuits and key health shared with the other instances (a shared store only).
        self.health = SharedHealth(self.bus, self.store, lambda: self.failover)
        tracing = settings.raw.tracing
        self.tracing = Tracing(tracing.otlp_endpoint, tracing.service_name)
        #: Enforces `settings.limits` (each request passes the rules of the config it started on).
        self.limiter = Limiter(self.store, limited) if limited else Limiter(self.store)
        self.http: aiohttp.ClientSession | None = None
        self.providers: dict[str, Provider] = {}
        self.failover: Failover | None = None
        self._observe = observe
        self._retried = retried
        #: Told where the store failed (`openai`, a platform's name, `answer`): for /metrics.
        self.store_failed: Callable[[str], None] = lambda where: None

    async def start(self) -> None:
        for name, a in self.settings.providers.items():
            if a.disabled:
                log.warning("provider %s (%s) disabled: %s", name, a.kind, a.disabled)
        for name, a in self.settings.platforms.items():
            if a.disabled:
                log.warning("platform %s (%s) disabled: %s", name, a.kind, a.disabled)
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=300),
            json_serialize=lambda o: __import__("orjson").dumps(o).decode(),
        )
        await self.store.open()
        self.bus.start()
        self.tracing.start()
        enabled = [n for n, a in self.settings.providers.items() if a.disabled is None and a.cls is not None]
        self.providers = await self.build_providers(self.settings, enabled)
        self.failover = Failover(
            self.providers,
            self.settings.raw.failover,
            self._observe,
            on_circuit=self.health.circuit_changed,
            on_retry=self._retried,
            tracing=self.tracing,
        )
        await self.health.load(list(self.providers))

    async def build_providers(self, settings: Settings, names: Sequence[str]) -> dict[str, Provider]:
        """Construct and start the named (enabled) providers of `settings`. When one fails to
        start, those already started are closed and the error is raised."""
        assert self.http is not None
        built: dict[str, Provider] = {}
        for name in names:
            a = settings.providers[name]
            assert a.cls is not None
            built[name] = a.cls(name, a.config, self.http)
        results = await asyncio.gather(*(p.start() for p in built.values()), return_exceptions=True)
        failed = [(n, r) for n, r in zip(built, results, strict=True) if isinstance(r, BaseException)]
        if failed:
            await self.close_providers(built.values())
            raise failed[0][1]
        self.health.attach(built)
        return built

    async def close_providers(self, providers: Iterable[Provider]) -> None:
        for p in providers:
            try:
                await p.close()
            except Exception:
                log.exception("closing provider %s failed", p.name)

    def use(self, settings: Settings, providers: dict[str, Provider], failover: Failover) -> None:
        """Swap to a reloaded config: requests that start from now on use it; those in flight
        keep the Failover (and providers) they started on."""
        self.settings, self.providers, self.failover = settings, providers, failover

    async def close(self) -> None:
        await self.close_providers(self.providers.values())
        await self.limiter.close()
        await self.health.close()
        await self.bus.close()
        await self.usage.close()
        await self.store.close()
        self.tracing.close()
        if self.http is not None:
            await self.http.close()

    # -- building a turn ---------------------------------------------------------------------

    def state_for(self, conversation: str) -> Any:
        if not conversation:
            return lambda name: NO_STATE
        store = self.store
        return lambda name: StoredState(store, conversation, name)

    async def request(
        self,
        channel: Channel,
        new: Sequence[Message],
        *,
        conversation: str = "",
        with_history: bool = True,
        user: str = "anonymous",
        params: Mapping[str, Any] | None = None,
        stream: bool = True,
        history: Sequence[Message] | None = None,
    ) -> ChatRequest:
        """System prompt + stored history (when there is a conversation; `history` given instead,
        e.g. a Slack thread read from Slack) + the new messages."""
        messages: list[Message] = []
        if channel.prompt:
            messages.append(Message("system", channel.prompt))
        if conversation and with_history and channel.config.history:
            # the caller's own system messages stay in front of the stored history
            lead = 0
            while lead < len(new) and new[lead].role in ("system", "developer"):
                lead += 1
            messages.extend(new[:lead])
            if history is None:
                history = await self.store.history(conversation, channel.config.history)
            messages.extend(history)
            messages.extend(new[lead:])
        else:
            messages.extend(new)
        merged = {**params, **channel.config.params} if params else channel.config.params
        return ChatRequest(tuple(messages), merged, channel.config.model, user, channel.name, conversation, stream)

    async def record(self, conversation: str, new: Sequence[Message], answer: str) -> None:
        """Append the exchange. Once started, the write finishes even if the caller is cancelled
        (a client that leaves as its answer ends must not cut the transcript short)."""
        if conversation:
            await asyncio.shield(self.store.append(conversation, [*new, Message("assistant", answer)]))

    # -- answering ---------------------------------------------------------------------------

    def stream(
        self, channel: Channel, request: ChatRequest, outcome: Outcome, chain: Sequence[str] | None = None
    ) -> AsyncIterator[Delta]:
        """`chain`: the providers to try (default: the channel's), e.g. those that can use tools."""
        assert self.failover is not None
        return self.failover.stream(
            channel.name, chain or channel.providers, request, self.state_for(request.conversation), outcome
        )

    def able(self, channel: Channel, capability: str, what: str) -> list[str]:
        """The channel's providers with `capability` (`embeds`, `draws`), in chain order;
        ValueError naming the others when there are none."""
        chain = [p for p in channel.providers if getattr(self.providers.get(p), capability, False)]
        if not chain:
            adapters = self.settings.providers
            kinds = ", ".join(f"{p} ({getattr(adapters.get(p), 'kind', '?')})" for p in channel.providers)
            raise ValueError(f"no provider of channel '{channel.name}' can {what}: {kinds or 'none enabled'}")
        return chain

    async def moderate(self, channel: str, provider: str, text: str) -> bool:
        """Does `provider` flag `text`? Through the failover core (its circuit, retries)."""
        assert self.failover is not None
        _, flagged = await self.failover.run(channel, [provider], lambda p: p.moderate(text))
        return flagged

    async def embed(self, channel: Channel, request: EmbedRequest) -> tuple[str, Embeddings]:
        """Embeddings from the first provider of the channel's chain that embeds (the others are
        skipped); ValueError when none of them can."""
        assert self.failover is not None
        chain = self.able(channel, "embeds", "embed")
        return await self.failover.run(channel.name, chain, lambda p: p.embed(request))

    async def transcribe(self, channel: Channel, request: TranscribeRequest) -> tuple[str, tuple[str, bytes]]:
        """A transcription from the first provider of the channel's chain that transcribes."""
        assert self.failover is not None
        chain = self.able(channel, "transcribes", "transcribe audio")
        return await self.failover.run(channel.name, chain, lambda p: p.transcribe(request))

    async def draw(self, channel: Channel, request: ImageRequest) -> tuple[str, list[JSON]]:
        """Images from the first provider of the channel's chain that generates them."""
        assert self.failover is not None
        chain = self.able(channel, "draws", "generate images")
        return await self.failover.run(channel.name, chain, lambda p: p.draw(request))

    async def complete(
        self, channel: Channel, request: ChatRequest, chain: Sequence[str] | None = None
    ) -> tuple[str, Completion]:
        assert self.failover is not None
        return await self.failover.complete(
            channel.name, chain or channel.providers, request, self.state_for(request.conversation)
        )
