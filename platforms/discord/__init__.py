"""Discord: the Gateway (a WebSocket Switchboard opens: no public URL) for direct messages and
mentions, and optionally the Interactions endpoint (`/hooks/<name>`) for the `/ask` command.

The Gateway protocol is spoken here, not through discord.py: one session, run under the core's
connection supervisor (reconnects with backoff), its state kept across reconnects so a dropped
connection RESUMEs and Discord replays what was missed; and testable against a fake gateway.

Quirks handled:
- HELLO gives the heartbeat interval; the first beat is jittered; a beat that was not
  acknowledged before the next is due means a zombie connection: it is closed and resumed. A
  heartbeat the server asks for (op 1) is sent at once. RECONNECT (op 7) resumes; INVALID_SESSION
  (op 9) resumes when Discord says it may, else identifies afresh; close codes 4004 and
  4010–4014 (bad token, disallowed intents...) are logged as configuration errors;
- the sequence number moves past an event only after it was handled (claimed and submitted), so a
  resume replays anything not yet handled; the persistent dedupe (the message id) answers each
  message once, across resumes and restarts;
- ours are direct messages and guild messages that mention the bot (`<@id>` / `<@!id>`, cut
  from the text) or reply to it; bots' messages (ours included) are never answered;
- answers reply to the question and stream into one message edited (PATCH) at most once per
  `update_interval`; a 429's `retry_after` is honoured; 2,000 characters per message, later
  parts as new messages; `allowed_mentions` is empty, so an answer can never ping @everyone;
- Interactions: Ed25519 over the timestamp and the raw body with the app's public key, the
  timestamp within the replay window, before anything is parsed; PING is answered PONG; `/ask`
  is deferred (type 5) at once and answered by editing the original response, later parts as
  follow-ups. An interaction token lives 15 minutes: a crashed answer older than that is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import Field, field_validator

from platforms.discord.api import DiscordAPI, DiscordError
from proxy.connections import json_objects
from proxy.contracts import Answer, Platform, PlatformConfig, PlatformContext
from proxy.edits import stream_edits
from proxy.errors import DeliveryError, RequestError, VerificationError
from proxy.text import split_text
from proxy.types import Inbound, WebRequest, WebResponse
from proxy.verify import within_window

log = logging.getLogger("switchboard.discord")
#: GUILDS, GUILD_MESSAGES, DIRECT_MESSAGES, MESSAGE_CONTENT.
INTENTS = (1 << 0) | (1 << 9) | (1 << 12) | (1 << 15)
#: Close codes that no reconnect will fix: the config is wrong.
FATAL = {4004: "authentication failed (bot_token)", 4010: "invalid shard", 4011: "sharding required",
         4012: "invalid API version", 4013: "invalid intents", 4014: "disallowed intents (enable Message Content "
         "Intent in the Developer Portal)"}  # fmt: skip
#: Close codes after which the session cannot be resumed.
FRESH = {4007, 4009}
MESSAGE_TYPES = {0, 19}  # default, reply
NO_PINGS = {"parse": [], "replied_user": False}
ASK = {
    "name": "ask",
    "description": "Ask the assistant",
    "type": 1,
    "options": [{"type": 3, "name": "question", "description": "Your question", "required": True}],
}
TOKEN_LIFE = 15 * 60  # seconds an interaction token can be used


class DiscordConfig(PlatformConfig):
    kind: Literal["discord"] = "discord"
    """`discord`: a Discord bot over the Gateway, and optionally the `/ask` slash command."""
    bot_token: str = Field(min_length=1)
    """The bot's token (Developer Portal → Bot → Reset Token)."""
    application_id: str | None = None
    """The application's id: needed for `/ask` (registered by `switchboard setup`, answered through webhooks)."""
    public_key: str | None = None
    """The application's public key (hex): enables the Interactions endpoint at `/hooks/<name>` for `/ask`."""
    api_base: str = "https://discord.com/api/v10"
    """REST API root (tests point it at a fake)."""
    gateway: bool = True
    """Hold the Gateway connection (direct messages and mentions); false: slash commands only."""
    intents: int = Field(INTENTS, ge=0)
    """Gateway intents (default: guilds, guild and direct messages, message content)."""
    update_interval: float = Field(1.0, ge=0)
    """Seconds between streamed edits of one answer."""
    text_limit: int = Field(2000, ge=100, le=2000)
    """Characters per message; longer answers continue in further messages."""
    replay_window: float = Field(300.0, gt=0)
    """Seconds an interaction's signed timestamp may differ from our clock."""
    max_retry_wait: float = Field(30.0, ge=0)
    """Longest `retry_after` waited for before an edit is given up."""
    placeholder: str = "…"
    """Text posted at once and then replaced by the streamed answer."""

    @field_validator("public_key", "application_id", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("public_key")
    @classmethod
    def _key_shape(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                Ed25519PublicKey.from_public_bytes(bytes.fromhex(v))
            except ValueError:
                raise ValueError("public_key must be the 64 hex digits the Developer Portal shows") from None
        return v


@dataclass
class Session:
    """What a dropped Gateway connection resumes with."""

    id: str | None = None
    seq: int | None = None
    resume_url: str | None = None


class DiscordPlatform(Platform):
    config_model = DiscordConfig
    config: DiscordConfig

    def __init__(self, name: str, config: DiscordConfig, ctx: PlatformContext) -> None:
        super().__init__(name, config, ctx)
        self.api = DiscordAPI(lambda: ctx.http, config.api_base, config.bot_token)
        self.key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(config.public_key)) if config.public_key else None
        self.session = Session()
        self.me: str | None = None
        self._acked = True

    async def setup(self) -> str | None:
        """Register `/ask` as a global command (PUT replaces the app's command list with it)."""
        if not self.config.application_id:
            return "nothing to set up (no application_id: /ask is not offered)"
        await self.api.call("PUT", f"/applications/{self.config.application_id}/commands", [ASK])
        return "/ask registered"

    def help_text(self) -> str | None:
        return "In servers, mention me or reply to me" + (" (or use /ask)." if self.key else ".")

    # -- Interactions endpoint -------------------------------------------------------------------

    def verify(self, request: WebRequest) -> None:
        if self.key is None:
            raise VerificationError("discord: no public_key: this bot takes no interactions", 403)
        ts = request.headers.get("x-signature-timestamp", "")
        try:
            signature = bytes.fromhex(request.headers.get("x-signature-ed25519", ""))
            self.key.verify(signature, ts.encode() + request.body)
        except (ValueError, InvalidSignature):
            raise VerificationError("discord: bad interaction signature") from None
        within_window(ts, self.config.replay_window, what="discord: signature timestamp")

    async def receive(self, request: WebRequest) -> WebResponse:
        try:
            data = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            raise RequestError("body is not JSON") from None
        if not isinstance(data, dict):
            raise RequestError("body is not a JSON object")
        if data.get("type") == 1:
            return _json({"type": 1})
        command = _dict(data.get("data"))
        if data.get("type") != 2 or command.get("name") != "ask":
            return _json({"type": 4, "data": {"content": "Unknown command.", "flags": 64}})
        msg = _interaction(self.name, data, command)
        if msg is None:
            raise RequestError("an /ask interaction without id, token, user or question")
        await self.ctx.accept(self, msg)
        return _json({"type": 5})

    def resumable(self, msg: Inbound, claimed_at: float) -> bool:
        if isinstance(msg.reply_to, dict) and "interaction" in msg.reply_to:
            return time.time() - claimed_at < TOKEN_LIFE - 60
        return True

    # -- Gateway ---------------------------------------------------------------------------------

    def connects(self) -> bool:
        return self.config.gateway

    async def connection(self, up: Callable[[], None]) -> None:
        s = self.session
        url = s.resume_url if s.id and s.resume_url else await self._gateway_url()
        who = f"discord {self.name} (gateway)"
        async with self.ctx.http.ws_connect(f"{url.rstrip('/')}/?v=10&encoding=json", max_msg_size=0) as ws:
            hello = await ws.receive_json(timeout=30)
            if not isinstance(hello, dict) or hello.get("op") != 10:
                raise ConnectionError("discord gateway: no HELLO")
            interval = float(hello["d"]["heartbeat_interval"]) / 1000
            beat = asyncio.create_task(self._heartbeat(ws, interval))
            try:
                if s.id:
                    await ws.send_json(
                        {"op": 6, "d": {"token": self.config.bot_token, "session_id": s.id, "seq": s.seq}}
                    )
                else:
                    await ws.send_json({"op": 2, "d": self._identity()})
                async for data in json_objects(ws, who):
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
                        log.info("%s: RECONNECT asked; resuming", who)
                        return
                    elif op == 9:
                        if not data.get("d"):
                            self.session = Session()
                        log.info(
                            "%s: session invalidated (%s)", who, "resumable" if data.get("d") else "identify again"
                        )
                        await asyncio.sleep(random.uniform(1, 5) if not data.get("d") else 0)
                        return
            finally:
                beat.cancel()
            code = ws.close_code
        if code in FRESH:
            self.session = Session()
        if code in FATAL:
            log.error("%s: closed %s: %s", who, code, FATAL[code])
        raise ConnectionError(f"discord gateway closed ({code})")

    async def _gateway_url(self) -> str:
        data = await self.api.call("GET", "/gateway/bot")
        url = data.get("url") if isinstance(data, dict) else None
        if not isinstance(url, str):
            raise ConnectionError("discord /gateway/bot: no url")
        return url

    def _identity(self) -> dict[str, Any]:
        props = {"os": "linux", "browser": "switchboard", "device": "switchboard"}
        return {"token": self.config.bot_token, "intents": self.config.intents, "properties": props}

    async def _heartbeat(self, ws: aiohttp.ClientWebSocketResponse, interval: float) -> None:
        self._acked = True
        await asyncio.sleep(interval * random.random())
        while not ws.closed:
            if not self._acked:
                log.warning("discord %s: heartbeat not acknowledged; reconnecting", self.name)
                await ws.close(code=4000)
                return
            self._acked = False
            await ws.send_json({"op": 1, "d": self.session.seq})
            await asyncio.sleep(interval)

    async def _dispatch(self, event: str, d: Any, up: Callable[[], None]) -> None:
        if not isinstance(d, dict):
            return
        if event == "READY":
            user = _dict(d.get("user"))
            self.me = str(user.get("id")) if user.get("id") else None
            self.session = Session(d.get("session_id"), self.session.seq, d.get("resume_gateway_url"))
            up()
        elif event == "RESUMED":
            up()
        elif event == "MESSAGE_CREATE":
            msg = _message(self.name, d, self.me)
            if msg is not None:
                await self.ctx.accept(self, msg)

    # -- answers ---------------------------------------------------------------------------------

    async def deliver(self, msg: Inbound, answer: Answer) -> None:
        to: dict[str, Any] = msg.reply_to
        hook = f"/webhooks/{to['app']}/{to['interaction']}" if "interaction" in to else None
        mid = "@original" if hook else (msg.recovered or {}).get("message")
        if not isinstance(mid, str):
            reference = {"message_id": to["message"], "fail_if_not_exists": False}
            mid = await self._post(to, self.config.placeholder, reference)
            await self.ctx.note(msg, message=mid)
        edit = f"{hook}/messages/@original" if hook else f"/channels/{to['channel']}/messages/{mid}"
        not_before = await stream_edits(
            answer,
            lambda text: self._edit(edit, text),
            interval=self.config.update_interval,
            limit=self.config.text_limit,
            errors=(DiscordError,),
            retry_after=lambda e: getattr(e, "retry_after", None),
        )
        await asyncio.sleep(max(0.0, min(not_before - time.monotonic(), self.config.max_retry_wait)))
        text = "\n".join([answer.text.strip(), *answer.images]).strip()
        parts = split_text(text, self.config.text_limit) or [self.texts["empty"]]
        await self._edit(edit, parts[0], patient=True)
        sent = int((msg.recovered or {}).get("sent", 1))
        for i, part in enumerate(parts[sent:], sent):
            if hook:
                await self._call("POST", hook, {"content": part, "allowed_mentions": NO_PINGS}, "follow-up")
            else:
                await self._post(to, part)
            await self.ctx.note(msg, sent=i + 1)

    async def _edit(self, path: str, text: str, *, patient: bool = False) -> None:
        body = {"content": text, "allowed_mentions": NO_PINGS}
        for attempt in range(3 if patient else 1):
            try:
                await self.api.call("PATCH", path, body, what="edit message")
                return
            except DiscordError as e:
                retry = e.retry_after is not None and e.retry_after <= self.config.max_retry_wait and attempt < 2
                if not (patient and retry):
                    if patient:
                        raise DeliveryError(str(e)) from None
                    raise
                await asyncio.sleep(e.retry_after or 0)

    async def _post(self, to: dict[str, Any], text: str, reference: dict[str, Any] | None = None) -> str:
        body: dict[str, Any] = {"content": text, "allowed_mentions": NO_PINGS}
        if reference:
            body["message_reference"] = reference
        result = await self._call("POST", f"/channels/{to['channel']}/messages", body, "create message")
        mid = result.get("id") if isinstance(result, dict) else None
        if not isinstance(mid, str):
            raise DeliveryError("discord create message: the answer has no id")
        return mid

    async def _call(self, verb: str, path: str, body: Any, what: str) -> Any:
        try:
            return await self.api.call(verb, path, body, what=what)
        except DiscordError as e:
            raise DeliveryError(str(e)) from None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _json(body: dict[str, Any]) -> WebResponse:
    return WebResponse(200, orjson.dumps(body), "application/json")


def _message(platform: str, d: dict[str, Any], me: str | None) -> Inbound | None:
    """A MESSAGE_CREATE as the core's message, or None when it is not ours to answer."""
    author = _dict(d.get("author"))
    mid, channel, user = d.get("id"), d.get("channel_id"), author.get("id")
    if not (isinstance(mid, str) and isinstance(channel, str) and isinstance(user, str)):
        return None
    if author.get("bot") or user == me or d.get("type", 0) not in MESSAGE_TYPES:
        return None
    direct = not d.get("guild_id")
    content = str(d.get("content") or "")
    mentions = _list(d.get("mentions"))
    mentioned = me is not None and (
        any(isinstance(m, dict) and m.get("id") == me for m in mentions)
        or f"<@{me}>" in content
        or f"<@!{me}>" in content
    )
    referenced = _dict(d.get("referenced_message"))
    replied = me is not None and (referenced.get("author") or {}).get("id") == me
    if not direct and not (mentioned or replied):
        return None
    text = re.sub(rf"<@!?{re.escape(me)}>", "", content).strip() if me else content.strip()
    kind = "text"
    if not text:
        attachments = d.get("attachments") or []
        if d.get("sticker_items"):
            kind = "sticker"
        elif attachments:
            ctype = str((attachments[0] or {}).get("content_type") or "")
            kind = "image" if ctype.startswith("image/") else "voice" if ctype.startswith("audio/") else "file"
    name = author.get("global_name") or author.get("username")
    return Inbound(
        platform,
        f"m:{mid}",
        channel,
        user,
        text,
        kind=kind,
        direct=direct,
        user_name=str(name) if name else None,
        reply_to={"channel": channel, "message": mid},
    )


def _interaction(platform: str, data: dict[str, Any], command: dict[str, Any]) -> Inbound | None:
    member = _dict(data.get("member"))
    user = member.get("user") if isinstance(member.get("user"), dict) else data.get("user")
    user = user if isinstance(user, dict) else {}
    options = _list(command.get("options"))
    question = next((o.get("value") for o in options if isinstance(o, dict) and o.get("name") == "question"), None)
    iid, token, app = data.get("id"), data.get("token"), data.get("application_id")
    channel = data.get("channel_id") or (data.get("channel") or {}).get("id")
    if not all(isinstance(v, str) and v for v in (iid, token, app, user.get("id"), question)):
        return None
    return Inbound(
        platform,
        f"i:{iid}",
        str(channel or f"dm:{user['id']}"),
        str(user["id"]),
        str(question).strip(),
        direct=not data.get("guild_id"),
        user_name=user.get("global_name") or user.get("username"),
        reply_to={"interaction": token, "app": app},
    )
