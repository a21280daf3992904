"""Feishu / Lark: event subscription v2, `im.message.receive_v1` (reference: platforms.md §4).

Quirks handled:
- with an Encrypt Key, bodies are `{"encrypt": ...}` (decrypted first) and events carry
  `X-Lark-Signature` (checked on the raw encrypted body, constant time, ±5 min timestamp window);
  `url_verification` is not signed: its `token` is checked. Without an Encrypt Key the
  Verification Token in `header.token` is checked;
- Feishu retries for hours (15 s … 6 h): dedupe on `header.event_id` and on `message_id`;
- `message.content` is a JSON string; @-mentions appear as `@_user_N` placeholders (stripped);
  in groups only messages that @-mention the bot are answered; app senders are ignored;
- replies use the reply API with a `uuid` derived from the inbound message id, so a retried send
  is not duplicated; with `stream: true` the first reply is sent early and edited (`PUT` on text
  messages) at most once per `update_interval`;
- `tenant_access_token` is cached until shortly before it expires and refreshed once on an
  invalid-token answer.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from typing import Any, Literal

import orjson
from pydantic import Field

from platforms.feishu_api import FeishuAPI, FeishuAPIError
from platforms.feishu_crypto import DecryptError, decrypt, signature
from proxy.contracts import AdapterConfig, Answer, Platform
from proxy.errors import RequestError, VerificationError
from proxy.text import split_text
from proxy.types import Inbound, WebRequest, WebResponse

log = logging.getLogger("switchboard.feishu")
PLACEHOLDER = re.compile(r"@_user_\d+")
KINDS = {"image": "image", "sticker": "image", "file": "file", "audio": "voice", "media": "video"}
DOMAINS = {"feishu": "https://open.feishu.cn", "lark": "https://open.larksuite.com"}
ACK = WebResponse(200, b'{"msg":"success"}', "application/json")


class FeishuConfig(AdapterConfig):
    kind: Literal["feishu"] = "feishu"
    app_id: str = Field(min_length=1)
    app_secret: str = Field(min_length=1)
    verification_token: str = Field(min_length=1)
    encrypt_key: str | None = None
    domain: Literal["feishu", "lark"] = "feishu"
    #: Overrides the domain's host (tests point it at a fake).
    api_base: str | None = None
    stream: bool = True
    update_interval: float = Field(1.0, ge=0)
    replay_window: int = Field(300, ge=1)
    text_limit: int = Field(4000, ge=100)


class FeishuPlatform(Platform):
    config_model = FeishuConfig

    async def start(self) -> None:
        c = self.config
        self.api = FeishuAPI(self.ctx.http, c.api_base or DOMAINS[c.domain], c.app_id, c.app_secret)
        self.bot_open_id = await self.api.bot_open_id()

    # -- inbound -----------------------------------------------------------------------------

    def _check_signature(self, req: WebRequest, key: str) -> None:
        ts, nonce = req.headers.get("x-lark-request-timestamp"), req.headers.get("x-lark-request-nonce", "")
        given = req.headers.get("x-lark-signature")
        if not ts or not given:
            raise VerificationError("missing X-Lark signature headers")
        try:
            if abs(time.time() - int(ts)) > self.config.replay_window:
                raise VerificationError("timestamp outside the replay window")
        except ValueError:
            raise VerificationError("timestamp is not a number") from None
        if not hmac.compare_digest(signature(ts, nonce, key, req.body), given):
            raise VerificationError("signature mismatch")

    def _token_ok(self, token: Any) -> bool:
        return isinstance(token, str) and hmac.compare_digest(token.encode(), self.config.verification_token.encode())

    def _open(self, body: bytes) -> dict[str, Any]:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise RequestError("body is not JSON") from None
        if not isinstance(data, dict):
            raise RequestError("body is not a JSON object")
        if "encrypt" in data:
            if not self.config.encrypt_key:
                raise RequestError("encrypted event but no encrypt_key is configured")
            try:
                data = orjson.loads(decrypt(self.config.encrypt_key, str(data["encrypt"])))
            except (DecryptError, orjson.JSONDecodeError) as e:
                raise RequestError(f"cannot decrypt the event: {e}") from None
        return data

    async def handle(self, request: WebRequest) -> WebResponse:
        data = self._open(request.body)
        if data.get("type") == "url_verification":
            if not self._token_ok(data.get("token")):
                raise VerificationError("url_verification token mismatch")
            return WebResponse(200, orjson.dumps({"challenge": data.get("challenge", "")}), "application/json")
        header = data.get("header") or {}
        if self.config.encrypt_key:
            self._check_signature(request, self.config.encrypt_key)
        elif not self._token_ok(header.get("token")):
            raise VerificationError("verification token mismatch")
        if header.get("event_type") != "im.message.receive_v1":
            return ACK
        event = data.get("event") or {}
        msg = self._parse(event, str(header.get("event_id") or ""))
        if msg is None or not await self.ctx.claim(msg.event_id) or not await self.ctx.claim("msg:" + msg.reply_to):
            return ACK
        self.ctx.submit(self, msg)
        return ACK

    def _parse(self, event: dict[str, Any], event_id: str) -> Inbound | None:
        sender, message = event.get("sender") or {}, event.get("message") or {}
        if not event_id or sender.get("sender_type") != "user" or not message.get("message_id"):
            return None
        direct = message.get("chat_type") == "p2p"
        mentions = message.get("mentions") or []
        if (
            not direct
            and self.bot_open_id
            and not any((m.get("id") or {}).get("open_id") == self.bot_open_id for m in mentions)
        ):
            return None  # a group message not addressed to us
        kind, text = _content(message)
        user = (sender.get("sender_id") or {}).get("open_id") or ""
        return Inbound(
            self.name,
            event_id,
            str(message.get("chat_id") or user),
            str(user),
            text,
            kind=kind,
            direct=direct,
            thread_id=message.get("root_id") or message.get("thread_id"),
            reply_to=str(message["message_id"]),
        )

    # -- outbound ----------------------------------------------------------------------------

    async def deliver(self, msg: Inbound, answer: Answer) -> None:
        source = msg.reply_to
        sent: str | None = None
        shown, last = "", time.monotonic()
        async for _ in answer:
            if not self.config.stream or time.monotonic() - last < self.config.update_interval:
                continue
            head = (split_text(answer.text, self.config.text_limit) or [""])[0]
            if head and head != shown:
                try:
                    if sent is None:
                        sent = await self.api.reply(source, head + " …", f"{source}-0")
                    else:
                        await self.api.edit(sent, head + " …")
                    shown = head
                except FeishuAPIError as e:
                    log.warning("feishu streaming update failed: %s", e)
                last = time.monotonic()
        parts = split_text(answer.text, self.config.text_limit) or ["(no answer)"]
        if sent is None:
            await self.api.reply(source, parts[0], f"{source}-0")
        else:
            await self.api.edit(sent, parts[0])
        for i, part in enumerate(parts[1:], 1):
            await self.api.reply(source, part, f"{source}-{i}")


def _content(message: dict[str, Any]) -> tuple[str, str]:
    mtype = message.get("message_type")
    try:
        content = orjson.loads(message.get("content") or "{}")
    except orjson.JSONDecodeError:
        content = {}
    if mtype == "text":
        return "text", PLACEHOLDER.sub("", str(content.get("text", ""))).strip()
    if mtype == "post":
        rows = content.get("content") or []
        text = " ".join(
            str(el.get("text", "")) for row in rows for el in row if isinstance(el, dict) and el.get("tag") == "text"
        )
        text = PLACEHOLDER.sub("", text).strip()
        return ("text", text) if text else ("image", "")
    return KINDS.get(str(mtype), "file"), ""
