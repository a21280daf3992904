"""Synology Chat: outgoing webhooks and bots (reference: shared/reference/platforms.md §5).

Quirks handled:
- requests are plain forms (`token`, `user_id`, `username`, `post_id`, `timestamp`, `text`, and
  `channel_id`/`channel_name`/`trigger_word` from outgoing webhooks) with no signature and no
  timestamp: the shared `token` is compared in constant time (401 on mismatch), `post_id` is the
  dedupe key (else user_id + timestamp), and `allow_users` restricts who may use the bot;
- replies go through the bot API to the user (`entry.cgi?api=SYNO.Chat.External&method=chatbot
  &version=2&token=%22<bot token>%22`, form field `payload={"text", "user_ids": [int]}`) for
  direct messages, and through an incoming-webhook URL (`incoming_urls[channel_id]`, else
  `incoming_url`) for channel messages. URLs holding tokens are never logged or put in errors;
  `verify_tls: false` accepts a self-signed NAS certificate;
- Synology cannot edit messages: the whole answer is sent when complete, split at 2,000
  characters, parts in order; each image goes as `{"text": "", "file_url": url}` (the NAS
  downloads it, so the URL must be reachable from the NAS; 32 MB at most);
- `user_id` and `channel_id` are numbers; a form where one is not (or does not fit 64 bits, as
  the bot API's `user_ids` must) is refused with 400 before the ack;
- `python:` / `bash:` messages (any case, `:` or `：`) are answered with a refusal, never run and
  never sent to a model;
- the ack is `{}` at once (Synology's deadline is not documented).

After a crash (proxy/claims.py, proxy/recovery.py): Synology was acknowledged and does not
retry; the restarted process answers the message itself (replies go by user or channel id, which
stay valid), within `server.recover_within`. A post that arrives again is dropped once answered,
left to a live process still answering it, and answered now when its claim ran out. The parts of
a long answer already sent are noted, so a recovered answer sends only the rest.

Prefix routing (how Synology bot users know it) is done by channels, whose `match.prefix` is
case-insensitive and stripped before the model sees the text:

    providers:
      gpt:   {kind: openai, api_key: "${OPENAI_API_KEY}", model: gpt-4o-mini}
      paint: {kind: openai_image, api_key: "${OPENAI_API_KEY}", model: dall-e-3}
    platforms:
      nas: {kind: synology, token: "${SYNOLOGY_BOT_TOKEN}", bot_token: "${SYNOLOGY_BOT_TOKEN}",
            api_base: "https://nas.local:5001", incoming_url: "${SYNOLOGY_INCOMING_URL:-}",
            allow_users: ["4", "5"], verify_tls: true}
    channels:
      - {name: nas-image, match: {platform: nas, prefix: ["img:", "图片：", "生成图片："]}, providers: [paint]}
      - {name: nas-chat,  match: {platform: nas, prefix: ["ai:", "gpt:"]}, providers: [gpt]}
      - {name: nas-rest,  match: {platform: nas}, providers: [gpt]}
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from typing import Any, Literal
from urllib.parse import parse_qs, quote

import aiohttp
import orjson
from pydantic import Field, field_validator, model_validator

from proxy.contracts import Answer, Platform, PlatformConfig
from proxy.errors import DeliveryError, RequestError, VerificationError
from proxy.text import split_text
from proxy.types import Inbound, WebRequest, WebResponse

log = logging.getLogger("switchboard.synology")
CODE_PREFIX = re.compile(r"^\s*(python|bash)\s*[:：]", re.IGNORECASE)
ACK = WebResponse(200, b"{}", "application/json")
#: Form fields that address a reply, numbers in Synology's API. The bot API takes `user_ids` as
#: JSON integers, so a value that is not a 64-bit whole number is refused here, before the ack,
#: rather than failing at delivery after it. `post_id` and `timestamp` only make the dedupe key:
#: any string serves.
ID_FIELDS = ("user_id", "channel_id")
DIGITS = re.compile(r"[0-9]{1,19}")


class SynologyConfig(PlatformConfig):
    kind: Literal["synology"] = "synology"
    """`synology`: Synology Chat outgoing webhooks and bots."""
    token: str | None = None
    """Token of the outgoing webhook / bot allowed to call us (or several in `tokens`)."""
    tokens: list[str] = Field(default_factory=list)
    """Several accepted tokens, as `token`."""
    api_base: str | None = None
    """NAS base URL for the bot API, e.g. https://nas.example:5001."""
    bot_token: str | None = None
    """The bot's token for the bot API at `api_base` (direct-message answers)."""
    incoming_url: str | None = None
    """Incoming-webhook URL for channel replies (it carries its own token)."""
    incoming_urls: dict[str, str] = Field(default_factory=dict)
    """Per channel_id incoming-webhook URLs, when several channels post to us."""
    allow_users: list[str] | None = None
    """User ids that may use the bot; unset: everyone."""
    verify_tls: bool = True
    """Check the NAS's TLS certificate (false for a self-signed one)."""
    text_limit: int = Field(2000, ge=100)
    """Characters per message; longer answers are sent in several parts."""
    send_interval: float = Field(0.5, ge=0, le=10)
    """Pause between the parts of a split answer (Synology throttles quick successive posts)."""

    @field_validator("token", "api_base", "bot_token", "incoming_url")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v or None

    @model_validator(mode="after")
    def _needs_a_token(self) -> SynologyConfig:
        if not self.accepted_tokens:
            raise ValueError("set `token` (or a list `tokens`): the token Synology sends with each message")
        return self

    @property
    def accepted_tokens(self) -> list[str]:
        return [t for t in [self.token, *self.tokens] if t]


class SynologyPlatform(Platform):
    config_model = SynologyConfig

    def _verify(self, token: str) -> None:
        given = token.encode()
        # Compare against every configured token (no early exit) so timing says nothing.
        matches = [hmac.compare_digest(given, t.encode()) for t in self.config.accepted_tokens]
        if not token or not any(matches):
            raise VerificationError("token mismatch")

    def verify(self, request: WebRequest) -> None:
        self._verify(_form(request).get("token", ""))

    async def receive(self, request: WebRequest) -> WebResponse:
        form = _form(request)
        user = form.get("user_id", "")
        if not user:
            raise RequestError("form has no user_id")
        _check_ids(form)
        if self.config.allow_users is not None and user not in self.config.allow_users:
            log.info("synology %s: user %s is not in allow_users; ignored", self.name, user)
            return ACK
        post_id = form.get("post_id") or f"{user}:{form.get('timestamp', '')}"
        msg = self._inbound(form, post_id, user)
        if not CODE_PREFIX.match(msg.text):
            await self.ctx.accept(self, msg)
        elif await self.ctx.claim(post_id):  # refused here, once: no answer is generated
            self.ctx.spawn(self._send(msg, {"text": self.texts["code_refused"]}), f"refuse:{post_id}")
        return ACK

    def _inbound(self, form: dict[str, str], post_id: str, user: str) -> Inbound:
        channel = form.get("channel_id") or None
        text, trigger = form.get("text", ""), form.get("trigger_word", "")
        if trigger and text.casefold().startswith(trigger.casefold()):
            text = text[len(trigger) :]
        return Inbound(
            self.name,
            post_id,
            channel or f"dm:{user}",
            user,
            text.strip(),
            direct=channel is None,
            user_name=form.get("username") or None,
            reply_to={"channel": channel, "user": user},
        )

    async def deliver(self, msg: Inbound, answer: Answer) -> None:
        async for _ in answer:
            pass  # Synology cannot edit messages: send the whole answer once it is complete
        payloads: list[dict[str, Any]] = [
            {"text": part} for part in split_text(answer.text.strip(), self.config.text_limit)
        ]
        for url in answer.images:
            if url.startswith(("https://", "http://")):
                payloads.append({"text": "", "file_url": url})
            else:  # an inline (data:) image: the NAS can only fetch URLs
                payloads.append({"text": self.texts["no_image_url"]})
        sent = int((msg.recovered or {}).get("sent", 0))  # parts an attempt cut off by a crash sent
        for i, payload in enumerate(payloads[sent:], sent):
            if i > sent and self.config.send_interval:
                await asyncio.sleep(self.config.send_interval)
            await self._send(msg, payload)
            if i + 1 < len(payloads):
                await self.ctx.note(msg, sent=i + 1)

    def _target(self, msg: Inbound, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """(URL, payload) for replying to `msg`. The URL holds a token: never log it."""
        c, channel = self.config, msg.reply_to["channel"]
        if channel is None and c.api_base and c.bot_token:
            try:
                user_id = int(msg.reply_to["user"])
            except ValueError:
                raise DeliveryError("synology: user_id is not a number; the bot API needs one") from None
            token = quote(f'"{c.bot_token}"', safe="")
            query = f"api=SYNO.Chat.External&method=chatbot&version=2&token={token}"
            return f"{c.api_base.rstrip('/')}/webapi/entry.cgi?{query}", {**payload, "user_ids": [user_id]}
        url = c.incoming_urls.get(channel or "") or c.incoming_url
        if not url:
            raise DeliveryError("synology: no way to reply (set api_base + bot_token, or incoming_url)")
        return url, payload

    async def _send(self, msg: Inbound, payload: dict[str, Any]) -> None:
        url, payload = self._target(msg, payload)
        form = {"payload": orjson.dumps(payload).decode()}
        try:
            async with self.ctx.http.post(
                url, data=form, ssl=self.config.verify_tls, timeout=aiohttp.ClientTimeout(total=30)
            ) as resp:
                raw, status = await resp.read(), resp.status
        except (aiohttp.ClientError, TimeoutError) as e:  # str(e) may hold the URL: only the type
            raise DeliveryError(f"synology send failed: {type(e).__name__}") from None
        try:
            out = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out = None
        if status != 200 or not isinstance(out, dict) or not out.get("success"):
            error = out.get("error") if isinstance(out, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            raise DeliveryError(f"synology send failed: HTTP {status}, error code {code}")


def _check_ids(form: dict[str, str]) -> None:
    """Each id field present is a whole number that fits a signed 64-bit integer (ASCII digits:
    `int()` would also take "+4", " 4" or Arabic-Indic digits)."""
    for name in ID_FIELDS:
        value = form.get(name, "")
        if value and not (DIGITS.fullmatch(value) and int(value) < 2**63):
            raise RequestError(f"{name} must be a whole number below 2^63")


def _form(request: WebRequest) -> dict[str, str]:
    """The posted form (its token is the request's credential)."""
    if request.method != "POST":
        raise RequestError("Synology Chat posts forms", status=405)
    try:
        return {k: v[0] for k, v in parse_qs(request.body.decode(), keep_blank_values=True).items()}
    except UnicodeDecodeError:
        raise RequestError("body is not a UTF-8 form") from None
