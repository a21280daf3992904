"""Feishu / Lark: event subscription v2, `im.message.receive_v1` (reference: platforms.md §4).

Quirks handled:
- with an Encrypt Key, events carry `X-Lark-Signature` = hex SHA-256(timestamp + nonce + key +
  raw body), checked on the raw bytes before anything else (constant time, plus our own ±5 min
  window on the timestamp, read as seconds), and bodies are `{"encrypt": ...}`. The one
  exception is `url_verification`: Feishu does not sign it, so it is decrypted and only its
  `token` is checked. Without an Encrypt Key, `header.token` (v1: top-level `token`) is checked;
- Feishu retries for hours (15 s … 6 h) when the 3-second ack is missed: dedupe on
  `header.event_id` and on `message_id`; the ack `{"msg": "success"}` goes out at once;
- messages: see `message.py`; app senders (other bots, ourselves) are ignored;
- replies: see `reply.py` (text once, or a card streamed with PATCH; `stream: false` sends
  once when the answer is complete) and `api.py` (cached tenant token, `code` checks).

After a crash (proxy/claims.py, proxy/recovery.py): Feishu was acknowledged and does not retry;
the restarted process answers the message itself (the reply goes to the message id, which stays
valid), within `server.recover_within`, updating the cards the dead process had sent (their ids
are noted on the claim). A retry is dropped once answered, left to a live process still answering
it, and answered now when its claim ran out.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import aiohttp
import orjson
from pydantic import Field, field_validator, model_validator
from yarl import URL

from platforms.feishu import frames
from platforms.feishu.api import FeishuAPI
from platforms.feishu.crypto import DecryptError, decrypt, signature
from platforms.feishu.message import addressed_to_bot, message_text
from platforms.feishu.reply import CardStream, send_once
from proxy.connections import received
from proxy.contracts import Answer, Platform, PlatformConfig, PlatformContext
from proxy.errors import RequestError, VerificationError
from proxy.http_util import json_object
from proxy.types import Inbound, WebRequest, WebResponse

log = logging.getLogger("switchboard.feishu")
DOMAINS = {"feishu": "https://open.feishu.cn", "lark": "https://open.larksuite.com"}
ACK = WebResponse(200, b'{"msg":"success"}', "application/json")
MESSAGE_EVENT = "im.message.receive_v1"


class FeishuConfig(PlatformConfig):
    kind: Literal["feishu"] = "feishu"
    """`feishu`: Feishu / Lark event subscriptions (im.message.receive_v1)."""
    app_id: str = Field(min_length=1)
    """The app's App ID (`cli_…`)."""
    app_secret: str = Field(min_length=1)
    """The app's App Secret, for tenant access tokens."""
    verification_token: str | None = Field(None, min_length=1)
    """The event subscription's Verification Token, checked on every event (webhook mode)."""
    mode: Literal["webhook", "websocket"] = "webhook"
    """`webhook`: Feishu POSTs events to `/hooks/<name>`; `websocket`: the long connection, an outbound WebSocket
    (no public URL), opened with the App ID and App Secret."""
    encrypt_key: str | None = None
    """Turns on encrypted events and signature checks ("" or absent: token mode)."""
    domain: Literal["feishu", "lark"] = "feishu"
    """`feishu` (open.feishu.cn) or `lark` (open.larksuite.com)."""
    api_base: str | None = None
    """Overrides the domain's host (tests point it at a fake)."""
    stream: bool = True
    """Stream the answer into a card that is updated as tokens arrive; false: send once."""
    update_interval: float = Field(1.0, ge=0)
    """Seconds between two card updates (Feishu allows 5 per second per chat, for all bots)."""
    replay_window: int = Field(300, ge=1)
    """Seconds a signed request's timestamp may be off."""
    text_limit: int = Field(4000, ge=100, le=8000)
    """Characters per message or card; longer answers continue in another one."""

    @field_validator("encrypt_key", "api_base")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v or None

    def language(self) -> str:
        """Feishu (China) speaks `zh` by default; Lark (international) `en`."""
        return self.locale or ("zh" if self.domain == "feishu" else "en")

    @model_validator(mode="after")
    def _webhook_needs_token(self) -> FeishuConfig:
        if self.mode == "webhook" and not self.verification_token:
            raise ValueError("webhook mode needs verification_token (or use mode: websocket)")
        return self


class FeishuPlatform(Platform):
    config_model = FeishuConfig
    ack_deadline = 3.0  # Feishu retries a delivery not answered 200 within 3 s

    def __init__(self, name: str, config: FeishuConfig, ctx: PlatformContext) -> None:
        super().__init__(name, config, ctx)
        self.bot_open_id: str | None = None
        self._api: FeishuAPI | None = None

    @property
    def api(self) -> FeishuAPI:
        if self._api is None:  # built on first use: ctx.http exists only once the app runs
            c = self.config
            self._api = FeishuAPI(self.ctx.http, c.api_base or DOMAINS[c.domain], c.app_id, c.app_secret)
        return self._api

    async def start(self) -> None:
        self.bot_open_id = await self.api.bot_open_id()

    # -- verify and read ---------------------------------------------------------------------

    def _signature_failure(self, req: WebRequest) -> VerificationError | None:
        """None when the request is correctly signed, or when no Encrypt Key is configured."""
        key = self.config.encrypt_key
        if not key:
            return None
        ts, given = req.headers.get("x-lark-request-timestamp", ""), req.headers.get("x-lark-signature", "")
        if not ts or not given:
            return VerificationError("missing X-Lark signature headers")
        expected = signature(ts, req.headers.get("x-lark-request-nonce", ""), key, req.body)
        if not hmac.compare_digest(expected.encode(), given.lower().encode()):
            return VerificationError("signature mismatch")
        try:
            skew = abs(time.time() - float(ts))
        except ValueError:
            return VerificationError("timestamp is not a number")
        if skew > self.config.replay_window:
            return VerificationError("timestamp outside the replay window")
        return None

    def _open(self, body: bytes, signed: bool) -> dict[str, Any]:
        """The event as JSON, decrypted when it arrives as `{"encrypt": ...}`."""
        data = json_object(body)
        if "encrypt" not in data:
            return data
        if not self.config.encrypt_key:
            raise RequestError("encrypted event but no encrypt_key is configured")
        try:
            inner = orjson.loads(decrypt(self.config.encrypt_key, str(data["encrypt"])))
        except (DecryptError, orjson.JSONDecodeError) as e:
            if not signed:  # not ours and not signed: say nothing more than "unauthorized"
                raise VerificationError(f"unsigned body that does not decrypt: {e}") from None
            raise RequestError("cannot decrypt the event (is encrypt_key right?)") from None
        if not isinstance(inner, dict):
            raise RequestError("decrypted event is not a JSON object")
        return inner

    def _token_ok(self, token: Any) -> bool:
        expected = (self.config.verification_token or "").encode()
        if not expected:
            return False
        return isinstance(token, str) and hmac.compare_digest(token.encode(), expected)

    def verify(self, request: WebRequest) -> None:
        """The signature (with an Encrypt Key) and the Verification Token: `url_verification` is
        unsigned by design, its token is the check."""
        if self.config.mode == "websocket":
            raise VerificationError(f"feishu {self.name}: long-connection mode: no event URL", 403)
        if request.method != "POST":
            raise RequestError("Feishu events are POSTed", status=405)
        failure = self._signature_failure(request)
        data = self._open(request.body, signed=failure is None)
        if data.get("type") == "url_verification":
            if not self._token_ok(data.get("token")):
                raise VerificationError("url_verification token mismatch")
            return
        if failure is not None:
            raise failure
        header: dict[str, Any] = data["header"] if isinstance(data.get("header"), dict) else {}
        token = header.get("token") if "schema" in data else data.get("token")
        if (not self.config.encrypt_key or token is not None) and not self._token_ok(token):
            raise VerificationError("verification token mismatch")

    async def receive(self, request: WebRequest) -> WebResponse:
        data = self._open(request.body, signed=True)
        if data.get("type") == "url_verification":
            return WebResponse(200, orjson.dumps({"challenge": str(data.get("challenge", ""))}), "application/json")
        await self._event(data)
        return ACK

    async def _event(self, data: dict[str, Any]) -> None:
        """A verified event (from a webhook or the long connection): a message is accepted."""
        header: dict[str, Any] = data["header"] if isinstance(data.get("header"), dict) else {}
        if header.get("event_type") != MESSAGE_EVENT:
            return  # other events (and legacy v1 envelopes) are not ours to answer
        msg = self._inbound(header, data.get("event"))
        if msg is None:
            return
        if await self.ctx.accept(self, msg) is None:
            log.info("feishu %s: duplicate delivery %s ignored", self.name, msg.event_id)

    # -- the long connection (proxy/connections.py supervises it) ----------------------------

    def connects(self) -> bool:
        return self.config.mode == "websocket"

    async def connection(self, up: Callable[[], None]) -> None:
        """One long connection: `/callback/ws/endpoint` with the App ID and Secret gives the
        WebSocket URL (its `service_id` goes in every frame we send); we ping at the interval the
        platform asks for; each event frame (reassembled when it came in parts) is handled like a
        webhook event and answered `{"code": 200}` once claimed and submitted."""
        c = self.config
        async with self.ctx.http.post(
            (c.api_base or DOMAINS[c.domain]) + "/callback/ws/endpoint",
            json={"AppID": c.app_id, "AppSecret": c.app_secret},
            headers={"locale": "zh"},
            timeout=aiohttp.ClientTimeout(total=15),
        ) as resp:
            answer = await resp.json(content_type=None) if resp.status == 200 else None
        data = answer.get("data") if isinstance(answer, dict) and answer.get("code") == 0 else None
        if not isinstance(data, dict) or not isinstance(data.get("URL"), str):
            raise ConnectionError(f"ws/endpoint answered HTTP {resp.status}: {str(answer)[:200]}")
        url = URL(data["URL"])
        service = int(url.query.get("service_id", "0") or 0)
        interval = _ping_interval(data.get("ClientConfig"), 120.0)
        parts: dict[str, dict[int, bytes]] = {}
        async with self.ctx.http.ws_connect(url, heartbeat=None) as ws:
            up()
            pinger = asyncio.create_task(self._ping(ws, service, lambda: interval))
            try:
                async for raw in received(ws, aiohttp.WSMsgType.BINARY):
                    try:
                        frame = frames.decode(raw)
                    except frames.FrameError as e:
                        log.warning("feishu %s: a frame that does not decode was ignored (%s)", self.name, e)
                        continue
                    if frame.method == frames.CONTROL:
                        if frame.header("type") == "pong" and frame.payload:
                            interval = _ping_interval(_json(frame.payload), interval)
                        continue
                    reply = await self._data(frame, parts)
                    if reply is not None:
                        await ws.send_bytes(reply)
            finally:
                pinger.cancel()

    async def _ping(self, ws: aiohttp.ClientWebSocketResponse, service: int, interval: Callable[[], float]) -> None:
        while True:
            await asyncio.sleep(interval())
            ping = frames.Frame(service=service, method=frames.CONTROL, headers=[("type", "ping")])
            await ws.send_bytes(frames.encode(ping))

    async def _data(self, frame: frames.Frame, parts: dict[str, dict[int, bytes]]) -> bytes | None:
        """A data frame's answer (the frame sent back with `{"code": 200}` as its payload), or None
        while a multi-part message is still incomplete."""
        total, at, msg_id = frame.header("sum"), frame.header("seq"), frame.header("message_id")
        payload = frame.payload or b""
        if total.isdigit() and int(total) > 1:
            got = parts.setdefault(msg_id, {})
            got[int(at) if at.isdigit() else len(got)] = payload
            if len(got) < int(total):
                return None
            payload = b"".join(got[i] for i in sorted(got))
            del parts[msg_id]
        code = 200
        if frame.header("type") == "event":
            started = time.monotonic()
            data = _json(payload)
            if isinstance(data, dict):
                await self._event(data)
            else:
                code = 400
            frame.headers.append(("biz_rt", str(int((time.monotonic() - started) * 1000))))
        frame.payload = orjson.dumps({"code": code})
        return frames.encode(frame)

    def _inbound(self, header: dict[str, Any], event: Any) -> Inbound | None:
        event = event if isinstance(event, dict) else {}
        sender, message = event.get("sender"), event.get("message")
        if not isinstance(sender, dict) or not isinstance(message, dict):
            raise RequestError("message event whose event.sender or event.message is not an object")
        event_id, message_id = header.get("event_id"), message.get("message_id")
        if not (event_id and message_id and isinstance(event_id, str) and isinstance(message_id, str)):
            raise RequestError("message event without event_id or message_id (strings)")
        ids = sender.get("sender_id")
        open_id = ids.get("open_id") if isinstance(ids, dict) else None
        user = open_id if isinstance(open_id, str) else ""
        if sender.get("sender_type") != "user" or (self.bot_open_id and user == self.bot_open_id):
            return None
        if not addressed_to_bot(message, self.bot_open_id):
            return None  # a group message that does not @-mention us
        read = message_text(message, self.bot_open_id)
        if read is None:
            return None
        kind, text = read
        return Inbound(
            self.name,
            event_id,
            _str(message.get("chat_id")) or user,
            user,
            text,
            kind=kind,
            direct=message.get("chat_type") == "p2p",
            thread_id=_str(message.get("root_id")) or _str(message.get("thread_id")),
            reply_to=message_id,
            extra_keys=(f"msg:{message_id}",),
        )

    # -- reply -------------------------------------------------------------------------------

    async def deliver(self, msg: Inbound, answer: Answer) -> None:
        c = self.config
        if c.stream:
            stream = CardStream(self.api, msg.reply_to, c.text_limit, c.update_interval, (self.ctx, msg), self.texts)
            await stream.run(answer)
        else:
            await send_once(self.api, msg.reply_to, answer, c.text_limit, self.texts)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _ping_interval(config: Any, default: float) -> float:
    """The ping interval a ClientConfig asks for (seconds), else `default`."""
    value = config.get("PingInterval") if isinstance(config, dict) else None
    return float(value) if isinstance(value, int | float) and value > 0 else default
