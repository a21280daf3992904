"""Telegram bots: a webhook, or long polling (`getUpdates`) where there is no public URL.

Quirks handled:
- webhook mode: Telegram sends the `secret_token` given to `setWebhook` in the
  `X-Telegram-Bot-Api-Secret-Token` header; it is compared in constant time before the body is
  read. `webhook_url` makes Switchboard call `setWebhook` itself at start;
- polling mode: `deleteWebhook` first (`getUpdates` answers 409 while a webhook is set), then
  long polls. An update is confirmed (the next `offset`) only after it was claimed and handed to
  the core, so none is confirmed and then lost; a restart reads the unconfirmed ones again and
  the persistent dedupe (on `update_id` and chat + message id) answers each once. A failed poll
  ends the connection and the core's supervisor reconnects with backoff. The first poll of a
  connection does not wait, so the connection counts as up as soon as Telegram answers;
- which messages are ours, mentions, commands: see `message.py`;
- answers stream into one message edited with `editMessageText` at most once per
  `update_interval` (`group_update_interval` in groups, where Telegram allows about 20 messages
  a minute); a 429's `retry_after` is honoured (edits and new messages alike, up to
  `max_retry_wait`); "message is not modified" is harmless. The final
  text is split at `text_limit` (4,096) characters, later parts sent as new messages; images
  go with `sendPhoto`. In groups the answer replies to the question (and stays in its topic);
- `parse_mode: MarkdownV2` renders the model's code blocks and bold, with everything else
  escaped; a message Telegram still cannot parse is sent again as plain text;
- the bot token is in every API URL: URLs are never logged or put in errors.

After a crash (proxy/claims.py): the message being edited is noted on the claim, so the next
process edits it instead of sending a second one; parts already sent are not sent again.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, model_validator

from platforms.telegram.api import TelegramAPI, TelegramError
from platforms.telegram.message import Me, parse_update, to_markdown_v2
from proxy.contracts import Answer, Platform, PlatformConfig, PlatformContext
from proxy.edits import stream_edits
from proxy.errors import DeliveryError, RequestError, VerificationError
from proxy.http_util import json_object
from proxy.text import split_text
from proxy.types import Inbound, WebRequest, WebResponse

log = logging.getLogger("switchboard.telegram")
ACK = WebResponse(200, b"{}", "application/json")
SECRET_HEADER = "x-telegram-bot-api-secret-token"


class TelegramConfig(PlatformConfig):
    kind: Literal["telegram"] = "telegram"
    """`telegram`: a Telegram bot (Bot API), by webhook or long polling."""
    bot_token: str = Field(min_length=1)
    """The bot's token from @BotFather (`123456:ABC…`)."""
    api_base: str = "https://api.telegram.org"
    """Bot API root (a self-hosted Bot API server, or a fake in tests)."""
    mode: Literal["webhook", "polling"] = "webhook"
    """`webhook` (Telegram calls `/hooks/<name>`) or `polling` (Switchboard long-polls `getUpdates`: no public URL)."""
    secret_token: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,256}$")
    """Webhook mode: the secret Telegram sends in `X-Telegram-Bot-Api-Secret-Token` (1–256 of A-Z a-z 0-9 _ -)."""
    webhook_url: str | None = None
    """Webhook mode: the public URL of `/hooks/<name>`; when set, `setWebhook` is called at start."""
    poll_timeout: int = Field(25, ge=0, le=50)
    """Polling mode: seconds each `getUpdates` long poll waits for updates."""
    update_interval: float = Field(1.0, ge=0)
    """Seconds between streamed edits of an answer in a private chat."""
    group_update_interval: float = Field(3.0, ge=0)
    """Seconds between streamed edits in groups (Telegram allows a bot about 20 messages a minute per group)."""
    parse_mode: Literal["none", "MarkdownV2"] = "none"
    """`none`: plain text; `MarkdownV2`: the model's code blocks and **bold** rendered, everything else escaped."""
    text_limit: int = Field(4096, ge=100, le=4096)
    """Characters per message; longer answers continue in further messages."""
    placeholder: str = "…"
    """Text sent at once and then replaced by the streamed answer."""
    max_retry_wait: float = Field(30.0, ge=0)
    """Longest `retry_after` waited for before an edit is given up."""

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> TelegramConfig:
        if self.mode == "webhook" and not self.secret_token:
            raise ValueError("webhook mode needs secret_token (Telegram sends it with every update)")
        return self


class TelegramPlatform(Platform):
    config_model = TelegramConfig
    config: TelegramConfig

    def __init__(self, name: str, config: TelegramConfig, ctx: PlatformContext) -> None:
        super().__init__(name, config, ctx)
        self.api = TelegramAPI(lambda: ctx.http, config.api_base, config.bot_token)
        self.me = Me()
        self.offset: int | None = None  # the next getUpdates offset (polling)

    async def start(self) -> None:
        try:
            me = await self.api.call("getMe")
            self.me = Me(me.get("id"), me.get("username"))
        except TelegramError as e:  # groups then answer replies and commands only
            log.warning("telegram %s: getMe failed (%s); @mentions are not recognised until a restart", self.name, e)
        if self.config.mode == "webhook" and self.config.webhook_url:
            try:
                log.info("telegram %s: %s", self.name, await self.setup())
            except TelegramError as e:
                log.warning("telegram %s: setWebhook failed: %s", self.name, e)

    def help_text(self) -> str | None:
        return self.texts["telegram_help"]

    async def setup(self) -> str:
        """Register the webhook (webhook mode with `webhook_url`) or remove it (polling mode)."""
        c = self.config
        if c.mode == "polling":
            await self.api.call("deleteWebhook", {"drop_pending_updates": False})
            return "webhook removed (polling mode)"
        if not c.webhook_url:
            return "nothing to set up (webhook mode without webhook_url: set the webhook yourself)"
        body = {"url": c.webhook_url, "secret_token": c.secret_token, "allowed_updates": ["message"]}
        await self.api.call("setWebhook", body)
        return "webhook set"

    # -- inbound -------------------------------------------------------------------------------

    def verify(self, request: WebRequest) -> None:
        if self.config.mode != "webhook" or not self.config.secret_token:
            raise VerificationError("telegram: this bot polls for updates: no webhook", 403)
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, self.config.secret_token.encode()):
            raise VerificationError("telegram: secret token mismatch")

    async def receive(self, request: WebRequest) -> WebResponse:
        if request.method != "POST":
            raise RequestError("Telegram posts updates", status=405)
        update = json_object(request.body)
        if not isinstance(update.get("update_id"), int):
            raise RequestError("body is not a Telegram Update (no update_id)")
        await self._update(update)
        return ACK

    async def _update(self, update: dict[str, Any]) -> None:
        msg = parse_update(self.name, update, self.me)
        if msg is not None:
            await self.ctx.accept(self, msg)

    def connects(self) -> bool:
        return self.config.mode == "polling"

    async def connection(self, up: Callable[[], None]) -> None:
        """Long-poll `getUpdates` until a poll fails (the supervisor then reconnects)."""
        await self.api.call("deleteWebhook", {"drop_pending_updates": False})
        first = True
        while True:
            # The first poll does not wait: the connection counts as up as soon as Telegram
            # answers, not after a quiet bot's first long poll ran out.
            timeout = 0 if first else self.config.poll_timeout
            body: dict[str, Any] = {"timeout": timeout, "allowed_updates": ["message"]}
            if self.offset is not None:
                body["offset"] = self.offset
            try:
                updates = await self.api.call("getUpdates", body, seconds=timeout + 15)
            except TelegramError as e:
                if e.code == 409:
                    log.warning("telegram %s: getUpdates conflict: another poller or a webhook (%s)", self.name, e)
                raise
            if first:
                up()
                first = False
            for update in updates if isinstance(updates, list) else []:
                if isinstance(update, dict) and isinstance(update.get("update_id"), int):
                    await self._update(update)  # claimed and submitted before it is confirmed
                    self.offset = update["update_id"] + 1

    # -- outbound ------------------------------------------------------------------------------

    async def deliver(self, msg: Inbound, answer: Answer) -> None:
        to: dict[str, Any] = msg.reply_to
        mid = (msg.recovered or {}).get("message")
        if not isinstance(mid, int):
            mid = await self._send(to, self.config.placeholder, reply=True)
            await self.ctx.note(msg, message=mid)
        interval = self.config.group_update_interval if to.get("group") else self.config.update_interval
        not_before = await stream_edits(
            answer,
            lambda text: self._edit(to, mid, text),
            interval=interval,
            limit=self.config.text_limit,
            errors=(TelegramError,),
            retry_after=lambda e: getattr(e, "retry_after", None),
        )
        await asyncio.sleep(max(0.0, min(not_before - time.monotonic(), self.config.max_retry_wait)))
        limit = self.config.text_limit if self.config.parse_mode == "none" else self.config.text_limit * 3 // 4
        parts = split_text(answer.text.strip(), limit) or [self.texts["empty"]]
        await self._edit(to, mid, parts[0], patient=True)
        sent = int((msg.recovered or {}).get("sent", 1))  # parts an attempt cut off by a crash sent
        for i, part in enumerate(parts[sent:], sent):
            await self._send(to, part)
            await self.ctx.note(msg, sent=i + 1)
        for url in answer.images:
            if url.startswith(("https://", "http://")):
                await self._call("sendPhoto", {"chat_id": to["chat"], "photo": url, **_thread(to)}, None)
            else:
                await self._send(to, self.texts["no_image_url"])

    async def _send(self, to: dict[str, Any], text: str, *, reply: bool = False) -> int:
        body: dict[str, Any] = {"chat_id": to["chat"], **_thread(to)}
        if reply and to.get("group") and isinstance(to.get("message"), int):
            body["reply_parameters"] = {"message_id": to["message"], "allow_sending_without_reply": True}
        result = await self._call("sendMessage", body, text)
        mid = result.get("message_id") if isinstance(result, dict) else None
        if not isinstance(mid, int):
            raise DeliveryError("telegram sendMessage: the answer has no message_id")
        return mid

    async def _edit(self, to: dict[str, Any], mid: int, text: str, *, patient: bool = False) -> None:
        body = {"chat_id": to["chat"], "message_id": mid}
        for attempt in range(3 if patient else 1):
            try:
                await self._text_call("editMessageText", body, text)
                return
            except TelegramError as e:
                if e.not_modified:
                    return
                if not (patient and e.retry_after and e.retry_after <= self.config.max_retry_wait and attempt < 2):
                    if patient:
                        raise DeliveryError(str(e)) from None
                    raise
                await asyncio.sleep(e.retry_after)

    async def _text_call(self, method: str, body: dict[str, Any], text: str) -> Any:
        """`method` with `text` in the configured parse mode; plain text if Telegram cannot parse it."""
        if self.config.parse_mode == "MarkdownV2":
            try:
                return await self.api.call(method, {**body, "text": to_markdown_v2(text), "parse_mode": "MarkdownV2"})
            except TelegramError as e:
                if not (e.code == 400 and "parse" in e.description):
                    raise
                log.info("telegram could not parse our MarkdownV2 (%s); sent as plain text", e.description)
        return await self.api.call(method, {**body, "text": text})

    async def _call(self, method: str, body: dict[str, Any], text: str | None) -> Any:
        """A message sent (with `text`, or a photo), a 429 waited out: a new message is never
        dropped for a rate limit Telegram asked us to wait out."""
        attempts = 0
        while True:
            try:
                if text is None:
                    return await self.api.call(method, body)
                return await self._text_call(method, body, text)
            except TelegramError as e:
                attempts += 1
                wait = e.retry_after
                if wait is None or wait > self.config.max_retry_wait or attempts == 3:
                    raise DeliveryError(str(e)) from None
                log.info("telegram %s: %s rate-limited; retrying in %.0f s", self.name, method, wait)
                await asyncio.sleep(wait)


def _thread(to: dict[str, Any]) -> dict[str, Any]:
    """The forum topic to answer in, if the question came from one."""
    return {"message_thread_id": to["thread"]} if isinstance(to.get("thread"), int) else {}
