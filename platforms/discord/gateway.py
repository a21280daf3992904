"""Discord's Gateway, spoken directly over aiohttp's WebSocket client.

Not discord.py: it would bring its own client, event loop ownership, reconnect logic and cache,
where Switchboard needs one session run by the core's connection supervisor (which reconnects
with backoff and reports the link in /readyz), state that outlives each connection so a drop
RESUMEs, and a protocol small enough to test against a fake gateway on loopback.

One `connection()` is one WebSocket (docs: events/gateway):
- HELLO (op 10) gives `heartbeat_interval`; the first beat (op 1, the last seq) waits a random
  part of it, then one per interval. A beat not acknowledged (op 11) before the next is due
  means a zombie connection: closed with a code other than 1000/1001 (those end the session)
  and resumed. A beat the server asks for (op 1) is sent at once.
- no session: IDENTIFY (op 2) with the token and intents; READY gives `session_id`,
  `resume_gateway_url` and the bot's user id. A session: RESUME (op 6) with `session_id` and
  the last seq on `resume_gateway_url`; Discord replays what was missed, then RESUMED.
- the seq moves past an event only once it was handled (claimed and submitted), so a resume
  replays anything not yet handled; dedupe on the message id answers each message once.
- RECONNECT (op 7): close (not 1000) and resume. INVALID_SESSION (op 9): `d` true resumes,
  false identifies afresh after a short random wait. Close codes 4007/4009 need a new session.
- close codes 4004 and 4010-4014 (bad token, disallowed intents...) are configuration errors
  that no reconnect fixes (docs: "Reconnect: false"), and every IDENTIFY counts towards 1,000 a
  day after which Discord resets the token: they are logged as errors and the next attempt
  waits `FATAL_PAUSE`. Likewise an exhausted `session_start_limit` waits until it resets.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from platforms.discord.api import DiscordAPI
from platforms.discord.messages import as_dict
from proxy.connections import json_objects

log = logging.getLogger("switchboard.discord")

#: GUILDS, GUILD_MESSAGES, DIRECT_MESSAGES, MESSAGE_CONTENT.
INTENTS = (1 << 0) | (1 << 9) | (1 << 12) | (1 << 15)
#: Close codes that no reconnect will fix: the config (or the Developer Portal) is wrong.
FATAL = {4004: "authentication failed (check bot_token)", 4010: "invalid shard", 4011: "sharding required",
         4012: "invalid API version", 4013: "invalid intents (check intents)", 4014: "disallowed intents (enable "
         "Message Content Intent under Bot in the Developer Portal, or leave it out of intents)"}  # fmt: skip
#: Close codes after which the session cannot be resumed.
FRESH = {4007, 4009}
#: Our own close code when we mean to resume (1000 and 1001 would end the session).
RESUMING = 4000
VERSION = "?v=10&encoding=json"


@dataclass
class Session:
    """What a dropped Gateway connection resumes with."""

    id: str | None = None
    seq: int | None = None
    resume_url: str | None = None


class Gateway:
    #: Seconds before identifying again after a fatal close code (a day holds 144 such tries).
    FATAL_PAUSE = 600.0
    #: Seconds (a random value between) before a fresh IDENTIFY after INVALID_SESSION.
    INVALID_SESSION_WAIT = (1.0, 5.0)

    def __init__(
        self,
        who: str,
        api: DiscordAPI,
        http: Callable[[], aiohttp.ClientSession],
        token: str,
        intents: int,
        on_event: Callable[[str, dict[str, Any]], Awaitable[None]],
    ) -> None:
        self.who, self.api, self.http = who, api, http
        self._token, self._intents, self._on_event = token, intents, on_event
        self.session = Session()
        self.me: str | None = None  # the bot's user id, from READY
        self._acked = True
        self._fatal_at: float | None = None

    async def connection(self, up: Callable[[], None]) -> None:
        """One WebSocket: returns when Discord asked for a reconnect, raises when it dropped."""
        if self._fatal_at is not None:
            await asyncio.sleep(max(0.0, self._fatal_at + self.FATAL_PAUSE - time.monotonic()))
        s = self.session
        url = s.resume_url if s.id and s.resume_url else await self._gateway_url()
        async with self.http().ws_connect(f"{url.rstrip('/')}/{VERSION}", max_msg_size=0) as ws:
            hello = await ws.receive_json(timeout=30)
            if not isinstance(hello, dict) or hello.get("op") != 10:
                raise ConnectionError("discord gateway: no HELLO")
            beat = asyncio.create_task(self._heartbeat(ws, float(hello["d"]["heartbeat_interval"]) / 1000))
            talk = asyncio.create_task(self._talk(ws, up))
            try:
                await asyncio.wait({beat, talk}, return_when=asyncio.FIRST_COMPLETED)
                if beat.done():  # a beat went unacknowledged (or could not be sent)
                    await ws.close(code=RESUMING)  # ends `talk` once the event in hand is handled
                again = await talk
            finally:
                beat.cancel()
                talk.cancel()
                if beat.done() and not beat.cancelled():
                    beat.exception()  # retrieved: the connection's end is what counts
            if again:
                await ws.close(code=RESUMING)
                return
            code = ws.close_code
        self._closed(code)
        raise ConnectionError(f"discord gateway closed ({code})")

    async def _talk(self, ws: aiohttp.ClientWebSocketResponse, up: Callable[[], None]) -> bool:
        """IDENTIFY or RESUME, then `_receive`."""
        s = self.session
        if s.id:
            await ws.send_json({"op": 6, "d": {"token": self._token, "session_id": s.id, "seq": s.seq}})
        else:
            await ws.send_json({"op": 2, "d": self._identity()})
        return await self._receive(ws, up)

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse, up: Callable[[], None]) -> bool:
        """Handle frames until the connection ends (False) or Discord asks for another (True)."""
        async for data in json_objects(ws, self.who):
            op = data.get("op")
            if op == 0:
                await self._dispatch(str(data.get("t")), data.get("d"), up)
                if isinstance(data.get("s"), int):
                    self.session.seq = data["s"]  # past this event only once it was handled
            elif op == 1:
                await ws.send_json({"op": 1, "d": self.session.seq})
            elif op == 11:
                self._acked = True
            elif op == 7:
                log.info("%s: RECONNECT asked; resuming", self.who)
                return True
            elif op == 9:
                resumable = data.get("d") is True
                log.info("%s: session invalidated (%s)", self.who, "resuming" if resumable else "identifying again")
                if not resumable:
                    self.session = Session()
                    await asyncio.sleep(random.uniform(*self.INVALID_SESSION_WAIT))
                return True
        return False

    def _closed(self, code: int | None) -> None:
        if code in FRESH:
            self.session = Session()
        if code in FATAL:
            self._fatal_at = time.monotonic()
            log.error(
                "%s: Discord closed the Gateway with %s: %s; trying again in %.0f minutes",
                self.who, code, FATAL[code], self.FATAL_PAUSE / 60,
            )  # fmt: skip

    async def _gateway_url(self) -> str:
        """GET /gateway/bot (the URL to identify on), after waiting out an exhausted daily
        session start limit."""
        data = await self.api.call("GET", "/gateway/bot", what="get gateway")
        url = data.get("url") if isinstance(data, dict) else None
        if not isinstance(url, str):
            raise ConnectionError("discord /gateway/bot: no url")
        limit = data.get("session_start_limit")
        if isinstance(limit, dict) and limit.get("remaining") == 0:
            wait = float(limit.get("reset_after") or 0) / 1000
            log.warning("%s: no session starts left today; identifying again in %.0f minutes", self.who, wait / 60)
            await asyncio.sleep(wait)
        return url

    def _identity(self) -> dict[str, Any]:
        props = {"os": "linux", "browser": "switchboard", "device": "switchboard"}
        return {"token": self._token, "intents": self._intents, "properties": props}

    async def _heartbeat(self, ws: aiohttp.ClientWebSocketResponse, interval: float) -> None:
        """Beat until one goes unacknowledged (a zombie connection: returns) or the connection
        fails (raises)."""
        self._acked = True
        await asyncio.sleep(interval * random.random())
        while True:
            if not self._acked:
                log.warning("%s: heartbeat not acknowledged; reconnecting", self.who)
                return
            self._acked = False
            await ws.send_json({"op": 1, "d": self.session.seq})
            await asyncio.sleep(interval)

    async def _dispatch(self, event: str, d: Any, up: Callable[[], None]) -> None:
        if not isinstance(d, dict):
            return
        if event == "READY":
            user = as_dict(d.get("user"))
            self.me = str(user["id"]) if user.get("id") else None
            self.session = Session(d.get("session_id"), self.session.seq, d.get("resume_gateway_url"))
            self._fatal_at = None
            up()
        elif event == "RESUMED":
            up()
        else:
            await self._on_event(event, d)
