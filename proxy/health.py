"""Readiness (`GET /readyz`): what this instance can answer right now, and why not.

Ready (200) while the store answers and at least one channel can be served: it has an enabled
provider whose circuit is not open. One provider down is `degraded`, still 200, so a load
balancer keeps an instance that can answer most channels. Not ready (503) before start-up has
finished, when the store is unreachable, or when no channel can be served at all.

Disabled providers say why (the unset variable's name, the missing package): never a secret.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from proxy.config import Settings
from proxy.engine import Engine
from proxy.failover import Circuit


async def readiness(settings: Settings, engine: Engine) -> tuple[int, dict[str, Any]]:
    """The status code and JSON body of `/readyz`."""
    if engine.failover is None:
        return 503, {"status": "not ready", "reason": "starting up: config not loaded into the engine yet"}
    store = await _ping(engine)
    providers = _providers(settings, engine.failover.circuits, time.monotonic())
    usable = {name for name, p in providers.items() if p["enabled"] and p["circuit"] != "open"}
    channels: dict[str, dict[str, Any]] = {}
    for ch in settings.channels:
        available = [p for p in ch.providers if p in usable]
        channels[ch.name] = {"servable": bool(available), "providers": [*ch.config.providers], "available": available}
    servable = sum(1 for c in channels.values() if c["servable"])
    reason = None if store else "store unreachable"
    if reason is None and not servable:
        reason = "no channel can be served: every provider is disabled or its circuit is open"
    if reason is not None:
        status = "not ready"
    elif servable < len(channels) or len(usable) < sum(p["enabled"] for p in providers.values()):
        status = "degraded"
    else:
        status = "ready"
    body: dict[str, Any] = {"status": status} | ({"reason": reason} if reason else {})
    body |= {"store": "ok" if store else "unreachable", "providers": providers, "channels": channels}
    if engine.bus.active:  # the other instances' news (proxy/bus.py): reported, not required
        body["bus"] = "listening" if engine.bus.listening else "not listening"
    return (503 if reason else 200), body


def _providers(settings: Settings, circuits: Mapping[str, Circuit], now: float) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, adapter in settings.providers.items():
        circuit = circuits.get(name)
        if adapter.disabled is not None or circuit is None:
            out[name] = {"kind": adapter.kind, "enabled": False, "disabled": adapter.disabled or "not started"}
            continue
        state, left = circuit.report(now)
        out[name] = {"kind": adapter.kind, "enabled": True, "circuit": state}
        if state == "open":
            out[name]["open_seconds_left"] = round(left, 1)
    return out


async def _ping(engine: Engine) -> bool:
    try:
        return await engine.store.ping()
    except Exception:
        return False
