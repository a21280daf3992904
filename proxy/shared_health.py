"""What one instance learns about a provider, the others know: circuits and key health.

Several instances on one Redis store: when a provider's circuit opens on instance A (too many
failures in a row), A announces it on the bus (`proxy/bus.py`) and B opens its own circuit for
the rest of the cooldown, so B stops sending requests to a provider A found down; when the
circuit closes again after a good trial request, B's closes too. An open circuit is also kept in
the store for as long as it stays open, so an instance that starts (or rebuilds the provider on a
reload) meanwhile opens it at once. Key health is shared the same way, live only: a key disabled
on a 401/quota error or cooling down after a 429 (providers that have key pools say so through
`Provider.share_health`; keys travel as ids, never as keys).

The request path stays local: nothing here reads the store per request; news arrives in the
background and changes the local circuit and key objects.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from proxy.bus import Bus
from proxy.contracts import Provider, Store
from proxy.failover import Failover

log = logging.getLogger("switchboard.health")

CIRCUIT, KEY = "circuit", "key"


class SharedHealth:
    def __init__(self, bus: Bus, store: Store, failover: Callable[[], Failover | None]) -> None:
        self.bus, self.store, self.failover = bus, store, failover
        #: Per provider name, the function that applies another instance's key news.
        self.appliers: dict[str, Callable[[dict[str, Any]], bool]] = {}
        self._writes: set[asyncio.Task[None]] = set()
        bus.on(CIRCUIT, self._circuit_news)
        bus.on(KEY, self._key_news)

    @property
    def active(self) -> bool:
        return self.bus.active

    # -- this instance's findings --------------------------------------------------------------

    def attach(self, providers: dict[str, Provider]) -> None:
        """Let (newly built) providers announce key health and take the others' news."""
        if not self.active:
            return
        for name, provider in providers.items():
            apply = provider.share_health(functools.partial(self._announce_key, name))
            if apply is not None:
                self.appliers[name] = apply

    def circuit_changed(self, provider: str, open_for: float | None) -> None:
        """The failover's observer: a circuit here opened (for `open_for` s) or closed again."""
        if not self.active:
            return
        until = None if open_for is None else round(time.time() + open_for, 3)
        self.bus.publish_soon(CIRCUIT, {"provider": provider, "until": until})
        self._write(self._keep(provider, until))

    def _announce_key(self, provider: str, news: dict[str, Any]) -> None:
        self.bus.publish_soon(KEY, {"provider": provider, **news})

    async def _keep(self, provider: str, until: float | None) -> None:
        key = f"health:circuit:{provider}"
        try:
            if until is None:
                await self.store.delete(key)
            else:
                await self.store.put(key, orjson.dumps({"until": until}).decode(), max(1.0, until - time.time()))
        except Exception as e:
            log.warning("keeping the circuit of %s in the store failed: %s", provider, e)

    def _write(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    # -- the other instances' findings ------------------------------------------------------------

    async def load(self, names: list[str]) -> None:
        """At start-up and after a reload rebuilt providers: open the circuits another instance
        found open (kept in the store while they stay open)."""
        if not self.active:
            return
        for name in names:
            try:
                raw = await self.store.get(f"health:circuit:{name}")
            except Exception as e:
                log.warning("reading the shared circuit of %s failed: %s", name, e)
                return
            if raw:
                self._apply_circuit(name, orjson.loads(raw).get("until"))

    def _circuit_news(self, data: dict[str, Any]) -> None:
        provider = data.get("provider")
        if isinstance(provider, str):
            until = data.get("until")
            self._apply_circuit(provider, until if isinstance(until, int | float) else None)

    def _apply_circuit(self, provider: str, until: float | None) -> None:
        failover = self.failover()
        circuit = failover.circuits.get(provider) if failover else None
        if circuit is None:
            return  # not a provider of this config
        if until is None:
            if circuit.failures:
                log.info("circuit of provider %s closed again by another instance", provider)
            circuit.force(time.monotonic(), None)
            return
        left = until - time.time()
        if left > 0:
            circuit.force(time.monotonic(), left)
            log.info("circuit of provider %s opened by another instance for %.0f s", provider, left)

    def _key_news(self, data: dict[str, Any]) -> None:
        apply = self.appliers.get(str(data.get("provider")))
        if apply is not None and apply(data):
            what = f"disabled ({data['disabled']})" if "disabled" in data else "cooling down"
            log.info("a key of provider %s is %s, found by another instance", data.get("provider"), what)

    async def close(self) -> None:
        if self._writes:
            await asyncio.wait(self._writes, timeout=2)
