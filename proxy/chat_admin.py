"""/reload, /status and /usage answered in chat, for the user ids a platform lists in `admins`.

The same operations as `POST /admin/reload`, the status page and `GET /admin/usage`, as short
plain text (operators read it in their chat app; it is not translated). Each use is logged with
the platform and user who asked.
"""

from __future__ import annotations

import logging
import time

from proxy.engine import Engine
from proxy.reload import Reloader
from proxy.usage import query, table

log = logging.getLogger("switchboard.admin")


class ChatAdmin:
    def __init__(self, engine: Engine, reloader: Reloader) -> None:
        self.engine, self.reloader = engine, reloader

    async def run(self, command: str, platform: str, user: str) -> str:
        log.info("chat admin command /%s from %s user %s", command, platform, user)
        try:
            if command == "reload":
                return (await self.reloader.reload(f"chat:{platform}")).summary()
            if command == "status":
                return self.status()
            return await self.usage()
        except Exception as e:  # an admin gets a line, never a traceback in chat
            log.exception("chat admin command /%s failed", command)
            return f"/{command} failed: {type(e).__name__}"

    def status(self) -> str:
        settings, failover, now = self.engine.settings, self.engine.failover, time.monotonic()
        lines = [f"{len(settings.channels)} channel(s)."]
        for name, adapter in settings.providers.items():
            if adapter.disabled:
                lines.append(f"provider {name} ({adapter.kind}): off, {adapter.disabled}")
                continue
            circuit = failover.circuits.get(name) if failover else None
            state, left = circuit.report(now) if circuit else ("closed", 0.0)
            until = f", {left:.0f} s left" if left else ""
            lines.append(f"provider {name} ({adapter.kind}): circuit {state}{until}")
        for name, adapter in settings.platforms.items():
            off = f": off, {adapter.disabled}" if adapter.disabled else ""
            lines.append(f"platform {name} ({adapter.kind}){off}")
        return "\n".join(lines)

    async def usage(self) -> str:
        body = await query(self.engine.store, "channel", "24h", self.engine.settings.raw.prices)
        return f"Tokens since {body['since']}:\n" + table(body["groups"], "channel")
