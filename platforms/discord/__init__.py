"""Discord: the Gateway (a WebSocket Switchboard opens: no public URL) for direct messages,
mentions and the `/ask` command, and optionally the Interactions endpoint (`/hooks/<name>`).

- The Gateway (`gateway.py`) is spoken directly, not through discord.py: one session under the
  core's connection supervisor, resumed after a drop so Discord replays what was missed.
- Which messages are ours (`messages.py`): direct messages, and in servers mentions of the bot
  or replies to it; never bots' messages. Dedupe on the message id, across resumes and restarts.
- Answers reply to the question and stream into one message edited (PATCH) at most once per
  `update_interval`; rate limits (429 `retry_after`, empty buckets) are waited out (`api.py`);
  2,000 characters per message, later parts as new messages; generated images as their URLs
  (Discord shows a preview); `allowed_mentions` is empty, so an answer can never ping @everyone.
  The answer's message id is noted on the claim: a process that takes over after a crash edits
  it instead of posting a second one.
- `/ask` comes one of two ways, never both: over the Gateway (INTERACTION_CREATE, deferred
  through the HTTP callback endpoint) when the app has no Interactions Endpoint URL, else to
  `/hooks/<name>` (with `public_key`): Ed25519 over the timestamp and the raw body, the timestamp
  within the replay window, before anything is parsed; PING is answered PONG, `/ask` deferred
  (type 5) in the response. Either way it is answered by editing the original response, later
  parts as follow-ups. An interaction token lives 15 minutes: a crashed answer older than that
  is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import Field, field_validator

from platforms.discord.api import DiscordAPI, DiscordError
from platforms.discord.gateway import INTENTS, Gateway
from platforms.discord.messages import as_dict, interaction, message
from proxy.contracts import Answer, Platform, PlatformConfig, PlatformContext
from proxy.edits import stream_edits
from proxy.errors import DeliveryError, RequestError, VerificationError
from proxy.http_util import json_object
from proxy.text import split_text
from proxy.types import Inbound, WebRequest, WebResponse
from proxy.verify import within_window

log = logging.getLogger("switchboard.discord")
NO_PINGS = {"parse": [], "replied_user": False}
ASK = {
    "name": "ask",
    "description": "Ask the assistant",
    "type": 1,
    "options": [{"type": 3, "name": "question", "description": "Your question", "required": True}],
}
UNKNOWN = {"type": 4, "data": {"content": "Unknown command.", "flags": 64}}  # ephemeral
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
    """Longest rate-limit wait (`retry_after`, an empty bucket) before an edit is given up."""
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


class DiscordPlatform(Platform):
    config_model = DiscordConfig
    config: DiscordConfig

    def __init__(self, name: str, config: DiscordConfig, ctx: PlatformContext) -> None:
        super().__init__(name, config, ctx)
        self.api = DiscordAPI(lambda: ctx.http, config.api_base, config.bot_token, max_wait=config.max_retry_wait)
        self.key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(config.public_key)) if config.public_key else None
        #: The Gateway session, kept across the supervisor's `connection` calls (so a drop resumes).
        self.gateway = Gateway(
            f"discord {name} (gateway)", self.api, lambda: ctx.http, config.bot_token, config.intents, self._event
        )

    async def setup(self) -> str | None:
        """Register `/ask` as a global command (PUT replaces the app's command list with it)."""
        if not self.config.application_id:
            return "nothing to set up (no application_id: /ask is not offered)"
        await self.api.call("PUT", f"/applications/{self.config.application_id}/commands", [ASK], what="commands")
        return "/ask registered"

    def help_text(self) -> str | None:
        ask = self.config.application_id and (self.key or self.config.gateway)  # /ask answered one way or the other
        return self.texts["discord_help"] + (" " + self.texts["discord_ask_help"] if ask else "")

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
        data = json_object(request.body)
        if data.get("type") == 1:
            return _json({"type": 1})
        if data.get("type") != 2 or as_dict(data.get("data")).get("name") != "ask":
            return _json(UNKNOWN)
        msg = interaction(self.name, data)
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
        await self.gateway.connection(up)

    async def _event(self, event: str, d: dict[str, Any]) -> None:
        if event == "MESSAGE_CREATE":
            msg = message(self.name, d, self.gateway.me)
            if msg is not None:
                await self.ctx.accept(self, msg)
        elif event == "INTERACTION_CREATE":
            await self._interaction(d)

    async def _interaction(self, data: dict[str, Any]) -> None:
        """`/ask` over the Gateway: Discord sends interactions here when the app has no
        Interactions Endpoint URL (one way or the other, never both). The answer to it goes by
        HTTP: deferred (type 5) through the callback endpoint within Discord's 3 seconds, then
        edited in as from the endpoint. A replayed interaction is claimed already: left alone."""
        iid, token = data.get("id"), data.get("token")
        if data.get("type") != 2 or not (isinstance(iid, str) and isinstance(token, str)):
            return
        callback = f"/interactions/{iid}/{token}/callback"
        if as_dict(data.get("data")).get("name") != "ask":
            await self._respond(callback, UNKNOWN)
            return
        msg = interaction(self.name, data)
        if msg is None or not await self.ctx.claim(msg.event_id):
            return
        if await self._respond(callback, {"type": 5}):
            self.ctx.submit(self, msg)
        else:
            await self.ctx.settle(msg.event_id)  # the token is dead: nothing can answer it

    async def _respond(self, callback: str, body: dict[str, Any]) -> bool:
        try:
            await self.api.call("POST", callback, body, what="interaction callback")
            return True
        except DiscordError as e:
            log.warning("discord %s: %s", self.name, e)
            return False

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
        """Edit to `text`. A streamed edit (not `patient`) raises the platform's error for
        `stream_edits` to judge; the final one waits out rate limits and raises DeliveryError."""
        body = {"content": text, "allowed_mentions": NO_PINGS}
        if patient:
            await self._call("PATCH", path, body, "edit message")
        else:
            await self.api.call("PATCH", path, body, what="edit message")

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
        """A call that must get through: a rate limit is waited out (twice at most, each within
        `max_retry_wait`); anything else, or a third one, is a DeliveryError."""
        for attempt in range(3):
            try:
                return await self.api.call(verb, path, body, what=what)
            except DiscordError as e:
                wait = e.retry_after
                if wait is None or wait > self.config.max_retry_wait or attempt == 2:
                    raise DeliveryError(str(e)) from None
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")


def _json(body: dict[str, Any]) -> WebResponse:
    return WebResponse(200, orjson.dumps(body), "application/json")
