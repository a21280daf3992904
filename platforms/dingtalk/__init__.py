"""DingTalk enterprise robot, HTTP callback mode (reference: shared/reference/platforms.md §2).

Quirks handled:
- the headers `timestamp` (ms) and `sign` = base64(HMAC-SHA256(app_secret, timestamp + "\\n" +
  app_secret)) are checked in constant time within a 1-hour window. The body is NOT signed, so a
  captured pair could be replayed with any body: we dedupe on `msgId`, and the reply URL inside
  the body (`sessionWebhook`) is only used when it is https on `oapi.dingtalk.com`, path
  `/robot/sendBySession`, no userinfo, default port, not expired — anything else is an SSRF
  attempt, refused before any work is done. The URL is parsed once with yarl (what aiohttp
  itself uses), and that parsed URL is what we POST to, so the check and the request cannot
  disagree; redirects are never followed;
- `conversationType` is "1" (1:1) or "2" (group, where the bot only sees @-messages); group text
  starts with a space and possibly the bot's @-name, both trimmed;
- DingTalk cannot edit messages, so the answer is sent whole, as markdown, split to
  `text_limit`, with the sender @-mentioned in groups (`at.atUserIds` and `@id` in the text, which
  DingTalk needs for the highlight); the JSON `errcode` is checked, not just the HTTP status.
  A failed send raises, so the core logs it and records the message as undelivered.

After a crash (proxy/claims.py, proxy/recovery.py): DingTalk was acknowledged and does not
retry; the restarted process answers the message itself while its sessionWebhook is still valid
(`resumable`: not expired; the stored URL passes the same allowlist check again), and logs and
drops it once the webhook expired. Should DingTalk deliver the message again, the claim decides:
answered → dropped, still being answered by a live process → left to it, run out → answered now.
The parts of a long answer already sent are noted, so a recovered answer sends only the rest.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import aiohttp
import orjson
from pydantic import Field, model_validator
from yarl import URL

from proxy.connections import json_objects
from proxy.contracts import Answer, Platform, PlatformConfig, PlatformContext
from proxy.errors import DeliveryError, RequestError, VerificationError
from proxy.http_util import json_object
from proxy.text import split_text
from proxy.types import Inbound, WebRequest, WebResponse
from proxy.verify import within_window

log = logging.getLogger("switchboard.dingtalk")
KINDS = {"text": "text", "richText": "text", "picture": "image", "audio": "voice", "video": "video", "file": "file"}
LEADING_MENTION = re.compile(r"^\s*(@\S+\s+)*")
ACK = WebResponse(200, b'{"msgtype":"empty"}', "application/json")
#: The Stream-mode topic of messages to the robot.
BOT_TOPIC = "/v1.0/im/bot/messages/get"


@dataclass(frozen=True)
class ReplyTarget:
    """Where and how to answer one message (kept in `Inbound.reply_to`)."""

    webhook: URL
    expires_ms: int | None
    mention: str | None  # senderStaffId to @-mention in groups


class DingTalkConfig(PlatformConfig):
    kind: Literal["dingtalk"] = "dingtalk"
    """`dingtalk`: a DingTalk robot's outgoing HTTP callback, answered through its sessionWebhook."""
    default_locale = "zh"
    app_secret: str = Field(min_length=1)
    """The robot's AppSecret, which signs each callback (`sign` header)."""
    session_webhook_hosts: list[str] = ["oapi.dingtalk.com"]
    """Hosts a sessionWebhook may point at (https, default port, /robot/sendBySession only)."""
    allow_insecure_webhook_hosts: list[str] = []
    """Plain-http hosts allowed as webhooks: for tests on loopback only; empty in production."""
    replay_window_ms: int = Field(3_600_000, ge=1000)
    """Milliseconds a callback's `timestamp` may be off."""
    mode: Literal["callback", "stream"] = "callback"
    """`callback`: DingTalk POSTs each message to `/hooks/<name>`; `stream`: Stream mode, an outbound WebSocket
    (no public URL), with `client_id`."""
    client_id: str | None = None
    """The app's ClientID (AppKey), for Stream mode; `app_secret` is its ClientSecret."""
    gateway: str = "https://api.dingtalk.com"
    """Stream mode's API root (`/v1.0/gateway/connections/open`, access tokens, AI cards); tests point it at a
    fake."""
    card_template_id: str | None = None
    """Stream mode: an AI card template (its content variable `card_content_key`); answers stream into a card
    created in the chat instead of one markdown message."""
    card_content_key: str = "content"
    """The card template's variable that holds the answer's text."""
    card_update_interval: float = Field(0.5, ge=0)
    """Seconds between two streamed card updates."""

    @model_validator(mode="after")
    def _stream_needs_client_id(self) -> DingTalkConfig:
        if self.mode == "stream" and not self.client_id:
            raise ValueError("mode: stream needs client_id (the app's ClientID / AppKey)")
        if self.card_template_id and self.mode != "stream":
            raise ValueError("card_template_id needs mode: stream (AI cards are sent with the app's credentials)")
        return self


def sign(secret: str, timestamp: str) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def parse_webhook(raw: str, hosts: list[str], insecure: list[str]) -> URL | str:
    """The sessionWebhook as the URL to POST to, or why it must not be used (a str)."""
    try:
        url = URL(raw)
        port = url.explicit_port
    except (ValueError, TypeError):
        return "not a URL"
    if not url.is_absolute():
        return "not an absolute URL"
    if url.user is not None or url.password is not None or "@" in (url.raw_authority or ""):
        return "userinfo in URL"
    if url.path != "/robot/sendBySession" or url.fragment:
        return f"unexpected path {url.path!r}"
    if url.scheme == "https" and url.host in {h.lower() for h in hosts} and port in (None, 443):
        return url
    if url.scheme == "http" and url.host in {h.lower() for h in insecure}:
        return url
    return f"host {url.host!r} over {url.scheme} is not allowed"


class DingTalkPlatform(Platform):
    config_model = DingTalkConfig
    text_limit: ClassVar[int] = 5000
    """DingTalk markdown messages stay well-formed up to about this many characters."""

    def __init__(self, name: str, config: DingTalkConfig, ctx: PlatformContext) -> None:
        super().__init__(name, config, ctx)
        self._access: tuple[str, float] | None = None  # access token, valid until (monotonic)

    async def start(self) -> None:
        if self.config.allow_insecure_webhook_hosts:
            log.warning(
                "dingtalk %s: plain-http sessionWebhook hosts allowed (%s); tests only",
                self.name,
                ", ".join(self.config.allow_insecure_webhook_hosts),
            )

    def verify(self, req: WebRequest) -> None:
        if self.config.mode == "stream":
            raise VerificationError(f"dingtalk {self.name}: Stream mode: no callback URL", 403)
        ts, given = req.headers.get("timestamp", ""), req.headers.get("sign", "")
        if not ts or not given:
            raise VerificationError("missing timestamp/sign headers")
        within_window(ts, self.config.replay_window_ms, unit=0.001, what="timestamp (ms)")
        expected = sign(self.config.app_secret, ts).encode()
        if not hmac.compare_digest(expected, given.encode("utf-8", "replace")):
            raise VerificationError("sign mismatch")

    async def receive(self, request: WebRequest) -> WebResponse:
        data = json_object(request.body)
        if not isinstance(data.get("msgId"), str) or not data["msgId"]:
            raise RequestError("body has no msgId")
        target = self._reply_target(data)
        if target is not None:
            await self.ctx.accept(self, self._parse(data, target))
        return ACK

    # -- Stream mode (proxy/connections.py supervises it) -------------------------------------

    def connects(self) -> bool:
        return self.config.mode == "stream"

    async def connection(self, up: Callable[[], None]) -> None:
        """One Stream-mode connection: `connections/open` with the ClientID and ClientSecret gives
        an endpoint and a ticket; each bot message (a CALLBACK frame on the bot topic) is handled
        like a callback and acknowledged once claimed and submitted; SYSTEM `ping` frames are
        answered, `disconnect` ends the connection (the supervisor makes a new one)."""
        c = self.config
        body = {
            "clientId": c.client_id,
            "clientSecret": c.app_secret,
            "subscriptions": [{"type": "CALLBACK", "topic": BOT_TOPIC}],
            "ua": "switchboard",
        }
        async with self.ctx.http.post(
            c.gateway.rstrip("/") + "/v1.0/gateway/connections/open",
            json=body,
            timeout=aiohttp.ClientTimeout(total=15),
        ) as resp:
            opened = await resp.json(content_type=None) if resp.status == 200 else None
        if not isinstance(opened, dict) or not opened.get("endpoint") or not opened.get("ticket"):
            raise ConnectionError(f"connections/open answered HTTP {resp.status} without an endpoint")
        url = URL(str(opened["endpoint"])).update_query(ticket=str(opened["ticket"]))
        async with self.ctx.http.ws_connect(url, heartbeat=30) as ws:
            up()
            async for data in json_objects(ws, f"dingtalk {self.name} (stream)"):
                ack, stop = await self._frame(data)
                if ack is not None:
                    await ws.send_str(orjson.dumps(ack).decode())
                if stop:
                    log.info("dingtalk %s: the gateway asked to disconnect: reconnecting", self.name)
                    return

    async def _frame(self, frame: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
        """A stream frame's acknowledgement (the official SDK's shape), and whether to disconnect."""
        headers = frame.get("headers") if isinstance(frame.get("headers"), dict) else {}
        assert isinstance(headers, dict)
        topic, kind = headers.get("topic"), frame.get("type")
        ack_headers = {"messageId": headers.get("messageId"), "contentType": "application/json"}
        if kind == "SYSTEM":
            if topic == "disconnect":
                return None, True
            return {"code": 200, "headers": ack_headers, "message": "OK", "data": frame.get("data", "")}, False
        if kind == "CALLBACK" and topic == BOT_TOPIC:
            try:
                data = orjson.loads(str(frame.get("data") or ""))
            except orjson.JSONDecodeError:
                data = None
            if isinstance(data, dict) and isinstance(data.get("msgId"), str) and data["msgId"]:
                target = self._reply_target(data)
                if target is not None:
                    await self.ctx.accept(self, self._parse(data, target))
                return {"code": 200, "headers": ack_headers, "message": "OK", "data": '{"response": "OK"}'}, False
            return {"code": 400, "headers": ack_headers, "message": "bad request", "data": "{}"}, False
        return {"code": 404, "headers": ack_headers, "message": "not implemented", "data": "{}"}, False

    def _reply_target(self, data: dict[str, Any]) -> ReplyTarget | None:
        """The checked sessionWebhook, or None (logged) when it must not be used."""
        webhook = parse_webhook(
            str(data.get("sessionWebhook") or ""),
            self.config.session_webhook_hosts,
            self.config.allow_insecure_webhook_hosts,
        )
        if isinstance(webhook, str):
            log.warning("dingtalk %s: refusing sessionWebhook (%s); message ignored", self.name, webhook)
            return None
        expires = data.get("sessionWebhookExpiredTime")
        if expires is not None and (not isinstance(expires, int | str) or not str(expires).isdigit()):
            log.warning("dingtalk %s: sessionWebhookExpiredTime is not a number; message ignored", self.name)
            return None
        target = ReplyTarget(webhook, None if expires is None else int(expires), None)
        if _expired(target):
            log.warning("dingtalk %s: sessionWebhook already expired; message ignored", self.name)
            return None
        return target

    def _parse(self, data: dict[str, Any], target: ReplyTarget) -> Inbound:
        msgtype = str(data.get("msgtype") or "text")
        direct = str(data.get("conversationType")) != "2"
        text = _text_of(msgtype, data)
        if not direct:
            text = LEADING_MENTION.sub("", text)
        text = text.strip()
        kind = KINDS.get(msgtype, "file")
        if msgtype == "richText" and not text:
            kind = "image"  # a rich text made of pictures only
        staff = str(data.get("senderStaffId") or "") or None
        user = staff or str(data.get("senderId") or "")
        return Inbound(
            self.name,
            data["msgId"],
            str(data.get("conversationId") or user),
            user,
            text,
            kind=kind,
            direct=direct,
            user_name=str(data.get("senderNick") or "") or None,
            reply_to=ReplyTarget(target.webhook, target.expires_ms, None if direct else staff),
        )

    def dump_reply_to(self, reply_to: Any) -> Any:
        return {"webhook": str(reply_to.webhook), "expires_ms": reply_to.expires_ms, "mention": reply_to.mention}

    def load_reply_to(self, data: Any) -> Any:
        c = self.config
        webhook = parse_webhook(str(data["webhook"]), c.session_webhook_hosts, c.allow_insecure_webhook_hosts)
        if isinstance(webhook, str):
            raise ValueError(f"stored sessionWebhook refused: {webhook}")
        expires = data.get("expires_ms")
        return ReplyTarget(webhook, None if expires is None else int(expires), data.get("mention"))

    def resumable(self, msg: Inbound, claimed_at: float) -> bool:
        return not _expired(msg.reply_to)

    async def deliver(self, msg: Inbound, answer: Answer) -> None:
        if self.config.card_template_id:
            return await self._card(msg, answer)
        async for _ in answer:
            pass  # DingTalk cannot edit a sent message: send the whole answer once
        target: ReplyTarget = msg.reply_to
        if _expired(target):
            log.warning("dingtalk %s: sessionWebhook expired before the answer was ready", self.name)
            raise DeliveryError("dingtalk sessionWebhook expired before the answer was ready")
        text = answer.text + "".join(f"\n\n![image]({u})" for u in answer.images if u.startswith("http"))
        title = _title(answer.text)
        parts = split_text(text, self.text_limit) or ["(no answer)"]
        sent = int((msg.recovered or {}).get("sent", 0))  # parts an attempt cut off by a crash sent
        for i, part in enumerate(parts[sent:], sent):
            body: dict[str, Any] = {"msgtype": "markdown", "markdown": {"title": title, "text": part}}
            if target.mention and i == 0:
                body["markdown"]["text"] = f"@{target.mention} {part}"
                body["at"] = {"atUserIds": [target.mention], "isAtAll": False}
            await self._send(target.webhook, body)
            if i + 1 < len(parts):
                await self.ctx.note(msg, sent=i + 1)

    # -- AI cards (Stream mode with card_template_id) -----------------------------------------

    async def _card(self, msg: Inbound, answer: Answer) -> None:
        """Stream the answer into an AI card: created and delivered in the chat (`createAndDeliver`,
        the bodies the official SDK's AICardReplier sends), its content replaced at most once per
        `card_update_interval` (`/v1.0/card/streaming`), then finalized and marked finished (or
        failed). The card's id is noted on the claim, so a recovered answer updates it."""
        c = self.config
        track = (msg.recovered or {}).get("card")
        if not isinstance(track, str):
            track = "sb" + hashlib.sha256(f"{self.name}|{msg.event_id}".encode()).hexdigest()[:40]
            space = f"IM_ROBOT.{msg.user_id}" if msg.direct else f"IM_GROUP.{msg.chat_id}"
            body: dict[str, Any] = {
                "cardTemplateId": c.card_template_id,
                "outTrackId": track,
                "cardData": {"cardParamMap": {c.card_content_key: "", "flowStatus": "1"}},
                "callbackType": "STREAM",
                "openSpaceId": f"dtv1.card//{space}",
                "imGroupOpenSpaceModel": {"supportForward": True},
                "imRobotOpenSpaceModel": {"supportForward": True},
            }
            if msg.direct:
                body["imRobotOpenDeliverModel"] = {"spaceType": "IM_ROBOT"}
            else:
                body["imGroupOpenDeliverModel"] = {"robotCode": c.client_id}
            await self._openapi("POST", "/v1.0/card/instances/createAndDeliver", body)
            await self.ctx.note(msg, card=track)
        last = 0.0
        async for _ in answer:
            if time.monotonic() - last >= c.card_update_interval and answer.text:
                await self._stream_card(track, answer.text, final=False, failed=False)
                last = time.monotonic()
        text = answer.text + "".join(f"\n\n![image]({u})" for u in answer.images if u.startswith("http"))
        await self._stream_card(track, text or "(no answer)", final=True, failed=answer.failed)
        status = "5" if answer.failed else "3"
        params = {c.card_content_key: text or "(no answer)", "flowStatus": status}
        await self._openapi("PUT", "/v1.0/card/instances", {"outTrackId": track, "cardData": {"cardParamMap": params}})

    async def _stream_card(self, track: str, text: str, *, final: bool, failed: bool) -> None:
        body = {
            "outTrackId": track,
            "guid": secrets.token_hex(16),
            "key": self.config.card_content_key,
            "content": text,
            "isFull": True,
            "isFinalize": final,
            "isError": failed,
        }
        await self._openapi("PUT", "/v1.0/card/streaming", body)

    async def _token(self) -> str:
        """The app's access token (`/v1.0/oauth2/accessToken`), cached until shortly before it expires."""
        if self._access is not None and time.monotonic() < self._access[1]:
            return self._access[0]
        c = self.config
        url = c.gateway.rstrip("/") + "/v1.0/oauth2/accessToken"
        body = {"appKey": c.client_id, "appSecret": c.app_secret}
        async with self.ctx.http.post(url, json=body, timeout=aiohttp.ClientTimeout(total=15)) as resp:
            data = await resp.json(content_type=None) if resp.status == 200 else None
        if not isinstance(data, dict) or not isinstance(data.get("accessToken"), str):
            raise DeliveryError(f"dingtalk access token refused: HTTP {resp.status}")
        life = float(data.get("expireIn") or 7200)
        self._access = (data["accessToken"], time.monotonic() + max(60.0, life - 300))
        return self._access[0]

    async def _openapi(self, method: str, path: str, body: dict[str, Any]) -> None:
        headers = {"x-acs-dingtalk-access-token": await self._token(), "content-type": "application/json"}
        url = self.config.gateway.rstrip("/") + path
        async with self.ctx.http.request(
            method, url, data=orjson.dumps(body), headers=headers, timeout=aiohttp.ClientTimeout(total=15)
        ) as resp:
            raw = await resp.read()
        if resp.status != 200:
            log.warning("dingtalk %s: %s %s refused: HTTP %s %s", self.name, method, path, resp.status, raw[:200])
            raise DeliveryError(f"dingtalk {path} failed: HTTP {resp.status}")

    async def _send(self, url: URL, body: dict[str, Any]) -> None:
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
            result = None
        errcode = result.get("errcode") if isinstance(result, dict) else None
        if resp.status != 200 or errcode != 0:
            errmsg = str(result.get("errmsg"))[:200] if isinstance(result, dict) else ""
            log.warning("dingtalk %s: send refused: HTTP %s, errcode %s %s", self.name, resp.status, errcode, errmsg)
            raise DeliveryError(f"dingtalk send failed: HTTP {resp.status}, errcode {errcode}")


def _text_of(msgtype: str, data: dict[str, Any]) -> str:
    """The text of a `text` message, or the text parts of a `richText` one."""
    if msgtype == "text":
        text = data.get("text")
        return str(text.get("content") or "") if isinstance(text, dict) else ""
    if msgtype == "richText":
        content = data.get("content")
        parts = content.get("richText") if isinstance(content, dict) else None
        if isinstance(parts, list):
            return "".join(str(p["text"]) for p in parts if isinstance(p, dict) and p.get("text"))
    return ""


def _expired(target: ReplyTarget) -> bool:
    return target.expires_ms is not None and target.expires_ms < time.time() * 1000


def _title(text: str) -> str:
    """The notification title: the first words of the answer, without markdown marks."""
    lines = [line.strip(" #>*_`-") for line in text.strip().splitlines()]
    first = next((line for line in lines if line), "")
    if len(first) <= 24:
        return first or "Answer"
    cut = first[:24].rsplit(" ", 1)[0]
    return (cut if len(cut) >= 8 else first[:24]) + "…"
