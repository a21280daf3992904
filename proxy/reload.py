"""Hot reload: the running config is a value that can be replaced.

A reload (SIGHUP, a change of the config file with `server.watch_config`, `POST /admin/reload`,
`switchboard reload`) reads and validates the config file in full with `load_config`, exactly as
`switchboard check` does, in a worker thread. An invalid config changes nothing: the error is
logged and returned. A valid one is applied in two steps:

1. off the request path: providers and platforms whose block changed (or that were added, or
   enabled) are built and started; the others are the same objects as before, so they keep their
   circuits, key pools and warm tokens. A kept circuit keeps its counts and takes the new
   thresholds. A provider that fails to start fails the reload (the running config stays);
2. one synchronous swap, with no await in between: the engine, the OpenAI front door, the
   dispatcher and the webhooks take the new `Settings` at once. A request or platform message
   reads the config once when it starts and keeps it, so answers in flight finish on the config,
   prompt and providers they started with.

Replaced and removed adapters are closed once nothing uses them any more: a provider when no
answer on a Failover that holds it is running (each Failover counts its answers in flight), a
platform when no webhook request and no reply of its own is in flight. There is no time limit,
since an answer may be long; shutdown closes whatever is still waiting.

What is bound at start-up cannot change live: every `server.*` field (host, port, timeouts,
leases, gc, log format, ...) and `store.url`. A reload that changes one keeps the running value,
reports "needs a restart: server.port" in its result and log, and applies the rest. The log
level and `server.log_content` do reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy import logs
from proxy.config import Adapter, RawConfig, Settings, load_config
from proxy.contracts import Platform, Provider
from proxy.engine import Engine
from proxy.errors import ConfigError
from proxy.failover import Failover

log = logging.getLogger("switchboard.reload")
#: Sections bound at start-up: a change is reported, not applied.
RESTART_SECTIONS = ("server", "store", "tracing")
#: Fields of the `server` section a reload does apply.
LIVE_SERVER_FIELDS = ("log_level", "log_content")
#: Sections compared name by name (adapters and channels); every other section is reported whole.
NAMED_SECTIONS = ("providers", "platforms", "channels")
#: How often a retired adapter is checked for work still using it.
RETIRE_POLL = 0.2
#: Seconds before a config watcher that failed is started again.
WATCH_RESTART = 5.0


@dataclass
class ReloadResult:
    """What a reload did: `ok` (applied, maybe with nothing changed) or the config error."""

    trigger: str
    ok: bool
    changed: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        status = "failed" if not self.ok else ("reloaded" if self.changed else "unchanged")
        out: dict[str, Any] = {"status": status, "changed": self.changed, "needs_restart": self.needs_restart}
        if self.error is not None:
            out["error"] = self.error
        return out

    def summary(self) -> str:
        if not self.ok:
            return f"config reload ({self.trigger}) failed, the running config stays: {self.error}"
        line = f"config reloaded ({self.trigger}): " + (", ".join(self.changed) or "nothing changed")
        if self.needs_restart:
            line += f"; needs a restart: {', '.join(self.needs_restart)}"
        return line


def _named(group: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = [f"{group}.{n} (added)" for n in new if n not in old]
    out += [f"{group}.{n} (removed)" for n in old if n not in new]
    for n in new:
        if n in old and old[n] != new[n]:
            was, now = old[n], new[n]
            if isinstance(was, Adapter) and (was.disabled is None) != (now.disabled is None):
                out.append(f"{group}.{n} ({'enabled' if now.disabled is None else 'disabled'})")
            else:
                out.append(f"{group}.{n} (changed)")
    return out


def differences(old: Settings, new: Settings) -> tuple[list[str], list[str]]:
    """What changed from `old` to `new` (names only, never values), and the start-up-bound fields
    that differ (`server.port`)."""
    changed = _named("providers", old.providers, new.providers) + _named("platforms", old.platforms, new.platforms)
    changed += _named("channels", old.by_name, new.by_name)
    if not changed and [c.name for c in old.channels] != [c.name for c in new.channels]:
        changed.append("channels (order)")
    skip = {*RESTART_SECTIONS, *NAMED_SECTIONS}
    changed += [s for s in RawConfig.model_fields if s not in skip and getattr(old.raw, s) != getattr(new.raw, s)]
    restart = []
    for section in RESTART_SECTIONS:
        was, now = getattr(old.raw, section), getattr(new.raw, section)
        diff = [f for f in type(was).model_fields if getattr(was, f) != getattr(now, f)]
        live = [f for f in diff if section == "server" and f in LIVE_SERVER_FIELDS]
        changed += [f"{section}.{f}" for f in live]
        restart += [f"{section}.{f}" for f in diff if f not in live]
    return changed, restart


def keep_start_up_bound(new: Settings, running: Settings) -> Settings:
    """`new`, with the running value of every section that cannot change live."""
    kept = {s: getattr(running.raw, s) for s in RESTART_SECTIONS}
    kept["server"] = kept["server"].model_copy(update={f: getattr(new.raw.server, f) for f in LIVE_SERVER_FIELDS})
    raw = new.raw.model_copy(update=kept)
    return dataclasses.replace(new, raw=raw, by_name={})


class Reloader:
    """Replaces the running config. One reload at a time; each is logged and counted."""

    def __init__(
        self,
        engine: Engine,
        apply: Callable[[Settings], None],
        platforms: Any,
        count: Callable[[str, str], None],
    ) -> None:
        """`apply` hands new Settings to everything else that reads them (synchronously, in the
        swap); `platforms` builds, swaps and retires platform adapters (proxy.app.Hooks)."""
        self.engine, self.apply, self.platforms, self.count = engine, apply, platforms, count
        self._lock = asyncio.Lock()
        self._retiring: dict[asyncio.Task[None], tuple[list[Provider], list[Platform]]] = {}
        self._old: list[Failover] = []  # earlier Failovers that may still have answers running
        #: Incremented by every reload, successful or not (tests wait on `reloaded`).
        self.generation = 0
        self.reloaded = asyncio.Condition()

    async def reload(self, trigger: str) -> ReloadResult:
        async with self._lock:
            result = await self._reload(trigger)
        (log.info if result.ok else log.error)("%s", result.summary())
        self.count(trigger, "failed" if not result.ok else ("changed" if result.changed else "unchanged"))
        async with self.reloaded:
            self.generation += 1
            self.reloaded.notify_all()
        return result

    async def wait(self, after: int) -> None:
        """Until a reload after generation `after` has finished (for tests and the CLI)."""
        async with self.reloaded:
            await self.reloaded.wait_for(lambda: self.generation > after)

    async def _reload(self, trigger: str) -> ReloadResult:
        running = self.engine.settings
        if running.path is None:
            return ReloadResult(trigger, False, error="this config was not loaded from a file: nothing to reload")
        try:
            loaded = await asyncio.to_thread(load_config, running.path)
        except ConfigError as e:
            return ReloadResult(trigger, False, error=str(e))
        changed, restart = differences(running, loaded)
        new = keep_start_up_bound(loaded, running)
        try:
            providers, retired = await self._providers(running, new)
        except Exception as e:  # a provider that cannot start: the running config stays
            return ReloadResult(trigger, False, error=f"a provider failed to start: {type(e).__name__}: {e}")
        platforms = await self.platforms.build(running, new)
        old = self.engine.failover
        assert old is not None
        kept = {n: c for n, c in old.circuits.items() if providers.get(n) is self.engine.providers.get(n)}
        failover = Failover(
            providers,
            new.raw.failover,
            old._observe,
            circuits=kept,
            on_circuit=old.on_circuit,
            on_retry=old.on_retry,
            tracing=old.tracing,
        )
        # -- the swap: no await from here to the end of the block
        self.engine.use(new, providers, failover)
        self.apply(new)
        retired_platforms = self.platforms.use(new, platforms)
        self._old.append(old)
        # --
        if "server.log_level" in changed:
            logs.set_level(new.raw.server.log_level)
        await self.engine.health.load([n for n in providers if n not in kept])  # rebuilt: open what others found
        if retired or retired_platforms:
            task = asyncio.create_task(self._retire(retired, retired_platforms))
            self._retiring[task] = (retired, retired_platforms)
            task.add_done_callback(self._retiring.pop)
        return ReloadResult(trigger, True, changed, restart)

    async def _providers(self, running: Settings, new: Settings) -> tuple[dict[str, Provider], list[Provider]]:
        """The providers of `new`: the running object where its block is unchanged, a new started
        one otherwise; and the running ones that are replaced or gone."""
        current = self.engine.providers
        enabled = [n for n, a in new.providers.items() if a.disabled is None and a.cls is not None]
        build = [n for n in enabled if n not in current or running.providers.get(n) != new.providers[n]]
        fresh = await self.engine.build_providers(new, build)
        providers = {n: fresh.get(n) or current[n] for n in enabled}
        retired = [p for n, p in current.items() if providers.get(n) is not p]
        return providers, retired

    async def _retire(self, providers: list[Provider], platforms: list[Platform]) -> None:
        """Close adapters a reload replaced, once no work in flight uses them."""
        while True:
            self._old = [f for f in self._old if f.inflight]
            busy = any(f.providers.get(p.name) is p for f in self._old for p in providers)
            if not busy and not any(self.platforms.busy(p) for p in platforms):
                break
            await asyncio.sleep(RETIRE_POLL)
        await self._close(providers, platforms)

    async def _close(self, providers: Iterable[Provider], platforms: Iterable[Platform]) -> None:
        await self.engine.close_providers(providers)
        await self.platforms.close_all(platforms)
        for p in providers:
            log.info("provider %s closed (replaced or removed by a reload)", p.name)
        for q in platforms:
            log.info("platform %s closed (replaced or removed by a reload)", q.name)

    async def close(self) -> None:
        """Shutdown (after the runner drained): close what is still waiting to be retired."""
        for task, (providers, platforms) in list(self._retiring.items()):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await self._close(providers, platforms)


async def watch(reloader: Reloader, path: Path, stop: asyncio.Event) -> None:
    """`server.watch_config`: reload when the config file, or a channel's `prompt_file` in its
    folder, changes. Changes are debounced (watchfiles groups a burst of writes into one event).
    Supervised: a watcher that fails is logged and started again."""
    from watchfiles import awatch

    folder = _folder(path)

    def ours(change: Any, changed: str) -> bool:
        return Path(changed).resolve() in _watched(reloader.engine.settings, path)

    while not stop.is_set():
        try:
            async for _ in awatch(folder, watch_filter=ours, stop_event=stop):
                await reloader.reload("watch")
        except Exception:
            log.exception("watching %s failed; watching again in %.0f s", path, WATCH_RESTART)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WATCH_RESTART)


def _folder(path: Path) -> Path:
    return path.resolve().parent


def _watched(settings: Settings, path: Path) -> set[Path]:
    base = path.resolve().parent
    files = {path.resolve()}
    files |= {(base / c.config.prompt_file).resolve() for c in settings.channels if c.config.prompt_file}
    return files
