"""DingTalk enterprise robot, HTTP callback mode (reference: shared/reference/platforms.md §2).

Quirks handled:
- the headers `timestamp` (ms) and `sign` = base64(HMAC-SHA256(app_secret, timestamp + "\\n" +
  app_secret)) are checked in constant time within a 1-hour window. The body is NOT signed, so a
  captured pair could be replayed with any body: we dedupe on `msgId`, and the reply URL inside
  the body (`sessionWebhook`) is only used when it is https on `oapi.dingtalk.com`, path
  `/robot/sendBySession`, no userinfo, default port, not expired — anything else is an SSRF
  attempt, refused before any work is done, and redirects are never followed;
- `conversationType` is "1" (1:1) or "2" (group, where the bot only sees @-messages); group text
  starts with a space and possibly the bot's @-name, both trimmed;
- DingTalk cannot edit messages, so the answer is sent whole, as markdown, split to
  `text_limit`, with the sender @-mentioned in groups (`at.atUserIds` and `@id` in the text, which
  DingTalk needs for the highlight); the JSON `errcode` is checked, not just the HTTP status.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import orjson
from pydantic import Field

from proxy.contracts import AdapterConfig, Answer, Platform
from proxy.errors import RequestError, VerificationError
from proxy.text import split_text
from proxy.types import Inbound, WebRequest, WebResponse

log = logging.getLogger("switchboard.dingtalk")
KINDS = {"text": "text", "richText": "text", "picture": "image", "audio": "voice", "video": "video", "file": "file"}
LEADING_MENTION = re.compile(r"^\s*(@\S+\s+)*")
ACK = WebResponse(200, b'{"msgtype":"empty"}', "application/json")


class DingTalkConfig(AdapterConfig):
    kind: Literal["dingtalk"] = "dingtalk"
    app_secret: str = Field(min_length=1)
    #: Hosts a sessionWebhook may point at (https, default port, /robot/sendBySession only).
    session_webhook_hosts: list[str] = ["oapi.dingtalk.com"]
    #: Plain-http hosts allowed as webhooks: for tests on loopback only; empty in production.
    allow_insecure_webhook_hosts: list[str] = []
    replay_window_ms: int = Field(3_600_000, ge=1000)
    text_limit: int = Field(5000, ge=100)


def sign(secret: str, timestamp: str) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def webhook_problem(url: str, hosts: list[str], insecure: list[str]) -> str | None:
    """Why `url` must not be used as a reply webhook, or None when it is fine."""
    try:
        p = urlsplit(url)
        port = p.port
    except ValueError:
        return "not a URL"
    if p.username or p.password or "@" in p.netloc:
        return "userinfo in URL"
    if p.path != "/robot/sendBySession":
        return f"unexpected path {p.path!r}"
    if p.scheme == "https" and p.hostname in hosts and port in (None, 443):
        return None
    if p.scheme == "http" and p.hostname in insecure:
        return None
    return f"host {p.hostname!r} over {p.scheme} is not allowed"


class DingTalkPlatform(Platform):
    config_model = DingTalkConfig

    def verify(self, req: WebRequest) -> None:
        ts, given = req.headers.get("timestamp"), req.headers.get("sign")
        if not ts or not given:
            raise VerificationError("missing timestamp/sign headers")
        try:
            skew = abs(time.time() * 1000 - int(ts))
        except ValueError:
            raise VerificationError("timestamp is not a number") from None
        if skew > self.config.replay_window_ms:
            raise VerificationError("timestamp outside the replay window")
        if not hmac.compare_digest(sign(self.config.app_secret, ts), given):
            raise VerificationError("sign mismatch")

    async def handle(self, request: WebRequest) -> WebResponse:
        self.verify(request)
        try:
            data = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            raise RequestError("body is not JSON") from None
        if not isinstance(data, dict) or not data.get("msgId"):
            raise RequestError("body has no msgId")
        webhook = str(data.get("sessionWebhook") or "")
        problem = webhook_problem(webhook, self.config.session_webhook_hosts, self.config.allow_insecure_webhook_hosts)
        if problem:
            log.warning("dingtalk %s: refusing sessionWebhook (%s); message ignored", self.name, problem)
            return ACK
        if _expired(data):
            log.warning("dingtalk %s: sessionWebhook already expired; message ignored", self.name)
            return ACK
        if not await self.ctx.claim(str(data["msgId"])):
            return ACK
        self.ctx.submit(self, self._parse(data, webhook))
        return ACK

    def _parse(self, data: dict[str, Any], webhook: str) -> Inbound:
        msgtype = str(data.get("msgtype") or "text")
        direct = str(data.get("conversationType")) != "2"
        text = ""
        if msgtype == "text":
            text = str((data.get("text") or {}).get("content") or "")
        elif msgtype == "richText":
            parts = ((data.get("content") or {}).get("richText")) or []
            text = "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))
        text = (LEADING_MENTION.sub("", text) if not direct else text).strip()
        kind = KINDS.get(msgtype, "file")
        if kind == "text" and msgtype == "richText" and not text:
            kind = "image"
        user = str(data.get("senderStaffId") or data.get("senderId") or "")
        return Inbound(
            self.name,
            str(data["msgId"]),
            str(data.get("conversationId") or user),
            user,
            text,
            kind=kind,
            direct=direct,
            user_name=data.get("senderNick"),
            reply_to={
                "webhook": webhook,
                "expires": data.get("sessionWebhookExpiredTime"),
                "staff": data.get("senderStaffId"),
                "group": not direct,
            },
        )

    async def deliver(self, msg: Inbound, answer: Answer) -> None:
        async for _ in answer:
            pass  # DingTalk cannot edit a sent message: send the whole answer once
        to = msg.reply_to
        if _expired({"sessionWebhookExpiredTime": to["expires"]}):
            log.warning("dingtalk %s: sessionWebhook expired before the answer was ready", self.name)
            return
        parts = split_text(answer.text, self.config.text_limit) or ["(no answer)"]
        for i, part in enumerate(parts):
            body: dict[str, Any] = {"msgtype": "markdown", "markdown": {"title": _title(answer.text), "text": part}}
            if to["group"] and to["staff"]:
                body["at"] = {"atUserIds": [to["staff"]], "isAtAll": False}
                if i == 0:
                    body["markdown"]["text"] = f"@{to['staff']} {part}"
            await self._send(to["webhook"], body)

    async def _send(self, url: str, body: dict[str, Any]) -> None:
        async with self.ctx.http.post(
            url,
            data=orjson.dumps(body),
            headers={"content-type": "application/json"},
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=15),
        ) as resp:
            raw = await resp.read()
        try:
            result = orjson.loads(raw)
        except orjson.JSONDecodeError:
            result = {}
        if resp.status != 200 or result.get("errcode") != 0:
            raise RuntimeError(
                f"dingtalk send failed: HTTP {resp.status}, errcode {result.get('errcode')}, {result.get('errmsg')}"
            )


def _expired(data: dict[str, Any]) -> bool:
    expires = data.get("sessionWebhookExpiredTime")
    try:
        return expires is not None and int(expires) < time.time() * 1000
    except (TypeError, ValueError):
        return False


def _title(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else "Answer"
    return first[:20]
