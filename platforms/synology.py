"""Synology Chat: outgoing webhooks and bots (reference: shared/reference/platforms.md §5).

Quirks handled:
- requests are plain forms with a shared `token` field and no signature or timestamp: the token
  is compared in constant time, `post_id` is the dedupe key, and `allow_users` can restrict who
  may use the bot;
- replies go through the incoming-webhook URL (channels) or the bot API with `user_ids` (direct
  messages): `entry.cgi?...&token=%22<token>%22` with a form field `payload=<json>`; URLs holding
  tokens are never logged; TLS verification can be turned off for self-signed NAS certificates;
- long answers are split (2,000 characters), images go out as `file_url` (the NAS fetches them);
- `python:` / `bash:` messages are refused: Switchboard does not run code from chat.
"""

from __future__ import annotations

import hmac
import logging
import re
from typing import Any, Literal
from urllib.parse import parse_qs, quote

import aiohttp
import orjson
from pydantic import Field

from proxy.contracts import AdapterConfig, Answer, Platform
from proxy.errors import DeliveryError, RequestError, VerificationError
from proxy.text import split_text
from proxy.types import Inbound, WebRequest, WebResponse

log = logging.getLogger("switchboard.synology")
CODE_PREFIX = re.compile(r"^\s*(python|bash|sh|shell)\s*[:：]", re.IGNORECASE)
NO_CODE = "Switchboard does not run code from chat messages."
ACK = WebResponse(200, b"{}", "application/json")


class SynologyConfig(AdapterConfig):
    kind: Literal["synology"] = "synology"
    #: Tokens of the outgoing webhooks / bots allowed to call us.
    tokens: list[str] = Field(min_length=1)
    #: NAS base URL for the bot API, e.g. https://nas.example:5001.
    api_base: str | None = None
    bot_token: str | None = None
    #: Incoming-webhook URL for channel replies (it carries its own token).
    incoming_url: str | None = None
    allow_users: list[str] | None = None
    verify_tls: bool = True
    text_limit: int = Field(2000, ge=100)


class SynologyPlatform(Platform):
    config_model = SynologyConfig

    def _verify(self, token: str) -> None:
        if not token or not any(hmac.compare_digest(token.encode(), t.encode()) for t in self.config.tokens if t):
            raise VerificationError("token mismatch")

    async def handle(self, request: WebRequest) -> WebResponse:
        try:
            form = {k: v[0] for k, v in parse_qs(request.body.decode(), keep_blank_values=True).items()}
        except UnicodeDecodeError:
            raise RequestError("body is not a UTF-8 form") from None
        self._verify(form.get("token", ""))
        user = form.get("user_id", "")
        if not user:
            raise RequestError("form has no user_id")
        if self.config.allow_users is not None and user not in self.config.allow_users:
            log.info("synology %s: user %s is not allowed", self.name, user)
            return ACK
        post_id = form.get("post_id") or f"{user}:{form.get('timestamp', '')}"
        if not await self.ctx.claim(post_id):
            return ACK
        channel = form.get("channel_id") or None
        text = form.get("text", "")
        if form.get("trigger_word") and text.startswith(form["trigger_word"]):
            text = text[len(form["trigger_word"]) :]
        msg = Inbound(
            self.name,
            post_id,
            channel or f"dm:{user}",
            user,
            text.strip(),
            direct=channel is None,
            user_name=form.get("username"),
            reply_to={"channel": channel, "user": user},
        )
        if CODE_PREFIX.match(text):
            self.ctx.spawn(self._send_text(msg, NO_CODE), f"refuse:{post_id}")
            return ACK
        self.ctx.submit(self, msg)
        return ACK

    async def deliver(self, msg: Inbound, answer: Answer) -> None:
        async for _ in answer:
            pass  # Synology cannot edit messages: send the whole answer
        for part in split_text(answer.text, self.config.text_limit) if answer.text.strip() else []:
            await self._send(msg, {"text": part})
        for url in answer.images:
            await self._send(msg, {"text": "", "file_url": url})

    async def _send_text(self, msg: Inbound, text: str) -> None:
        await self._send(msg, {"text": text})

    async def _send(self, msg: Inbound, payload: dict[str, Any]) -> None:
        c = self.config
        if msg.reply_to["channel"] is None and c.api_base and c.bot_token:
            token = quote(f'"{c.bot_token}"', safe="")
            query = f"api=SYNO.Chat.External&method=chatbot&version=2&token={token}"
            url = f"{c.api_base.rstrip('/')}/webapi/entry.cgi?{query}"
            payload = {**payload, "user_ids": [int(msg.reply_to["user"])]}
        elif c.incoming_url:
            url = c.incoming_url
        else:
            raise DeliveryError("synology: no way to reply (set api_base + bot_token, or incoming_url)")
        form = {"payload": orjson.dumps(payload).decode()}
        async with self.ctx.http.post(
            url, data=form, ssl=c.verify_tls, timeout=aiohttp.ClientTimeout(total=30)
        ) as resp:
            raw = await resp.read()
        try:
            ok = bool(orjson.loads(raw).get("success"))
        except (orjson.JSONDecodeError, AttributeError):
            ok = False
        if resp.status != 200 or not ok:
            raise DeliveryError(f"synology send failed: HTTP {resp.status}")  # never the URL: it holds a token
