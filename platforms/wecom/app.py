"""WeCom (企业微信) self-built app (自建应用): the API receive callback (接收消息), answered through
`message/send` (reference §3.8; developer.work.weixin.qq.com/document/path/90238 and /90236).

Protocol quirks handled here:
- every callback is encrypted for the CorpID. GET URL verification carries `msg_signature`,
  `timestamp`, `nonce` and an *encrypted* `echostr`: checked, decrypted and answered with the
  plaintext (no quotes, no newline) at once. POSTs carry the same query and an XML body
  `<xml><ToUserName/><AgentID/><Encrypt/></xml>`; `msg_signature` covers the Encrypt value, and
  the timestamp must lie within `replay_window`;
- WeCom waits 5 s and delivers a message 3 times in all; only HTTP 200 counts. We answer an empty
  200 as soon as the message is claimed (no passive reply: the answer goes through the API), and
  dedupe on `MsgId`, events on `FromUserName` + `CreateTime` (+ Event, EventKey);
- app messages cannot be edited, so an answer is sent once it is complete, split at `text_limit`
  UTF-8 bytes (2,048 for a text message);
- `subscribe` (a member starts following the app) is answered with the help text; other events
  (enter_agent, click, view, location ...) are acknowledged and ignored; images, voice, video,
  files, locations and links get the core's polite "text only" answer;
- messages the app sends through `message/send` are not called back, so there is no loop to
  break; messages for another AgentID (a misrouted callback URL) are ignored.

After a crash the restarted process answers the claimed message itself (replies go to the
member's UserID, which stays valid); a WeCom retry of an answered message is dropped.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field, field_validator

from platforms.wechat_mp.crypto import aes_key
from platforms.wechat_mp.xml import MalformedXML, parse_fields
from platforms.wecom.api import WeComAPI
from platforms.wecom.callback import CallbackCrypto
from platforms.wecom.text import full_text, split_bytes
from proxy.contracts import Answer, Platform, PlatformConfig, PlatformContext
from proxy.errors import RequestError
from proxy.types import Inbound, WebRequest, WebResponse

log = logging.getLogger("switchboard.wecom")
ACK = WebResponse(200, b"")
KINDS = {"text": "text", "image": "image", "voice": "voice", "video": "video", "file": "file"}
KINDS |= {"location": "location", "link": "link", "shortvideo": "video"}


class WeComConfig(PlatformConfig):
    kind: Literal["wecom"] = "wecom"
    """`wecom`: a WeCom (企业微信) self-built app's message callback; answers go out through `message/send`."""
    default_locale = "zh"
    corp_id: str = Field(min_length=1)
    """The enterprise's CorpID (我的企业 → 企业信息 → 企业ID); callbacks are encrypted for it."""
    agent_id: int = Field(ge=0)
    """The app's AgentId (应用管理 → the app)."""
    secret: str = Field(min_length=1)
    """The app's Secret, for access tokens (`gettoken`)."""
    token: str = Field(min_length=1)
    """The Token of the app's API receive settings (接收消息 → 设置API接收); it signs every callback."""
    encoding_aes_key: str
    """The EncodingAESKey of the same settings (43 characters); every callback is encrypted with it."""
    api_base: str = "https://qyapi.weixin.qq.com"
    """WeCom API root (tests point it at a fake)."""
    allow_users: list[str] | None = None
    """Member UserIDs that may use the bot (others are ignored); unset: everyone who can see the app."""
    replay_window: float = Field(300.0, gt=0)
    """Seconds a callback's signed timestamp may differ from our clock."""
    text_limit: int = Field(2048, ge=100, le=2048)
    """UTF-8 bytes per message (WeCom's text limit is 2,048 bytes: about 680 Chinese characters); longer answers go
    out in several messages."""

    @field_validator("encoding_aes_key")
    @classmethod
    def _key_shape(cls, v: str) -> str:
        aes_key(v)
        return v


class WeComPlatform(Platform):
    config_model = WeComConfig
    config: WeComConfig
    ack_deadline = 5.0  # WeCom retries a callback not answered 200 within 5 s

    def __init__(self, name: str, config: WeComConfig, ctx: PlatformContext) -> None:
        super().__init__(name, config, ctx)
        self.crypto = CallbackCrypto(config.token, config.encoding_aes_key, config.corp_id, f"wecom {name}")
        self._api: WeComAPI | None = None

    @property
    def api(self) -> WeComAPI:
        if self._api is None:  # built on first use: ctx.http exists only once the app runs
            c = self.config
            self._api = WeComAPI(self.ctx.http, c.api_base, c.corp_id, c.secret, c.agent_id)
        return self._api

    # -- inbound ---------------------------------------------------------------------------------

    def verify(self, request: WebRequest) -> None:
        self.crypto.verify(request, _encrypted, self.config.replay_window)

    async def receive(self, request: WebRequest) -> WebResponse:
        if request.method == "GET":  # URL verification: the decrypted echostr, as it is
            return WebResponse(200, self.crypto.open(request.query["echostr"]))
        try:
            fields = parse_fields(self.crypto.open(_encrypted(request.body)))
        except MalformedXML as e:
            raise RequestError(str(e)) from None
        msg = self._inbound(fields)
        if msg is not None and await self.ctx.accept(self, msg) is None:
            log.info("wecom %s: duplicate delivery %s ignored", self.name, msg.event_id)
        return ACK

    def _inbound(self, f: dict[str, str]) -> Inbound | None:
        """The message as the core sees it, or None for what we do not answer."""
        user, msg_type = f.get("FromUserName", ""), f.get("MsgType", "")
        if not user or not msg_type:
            raise RequestError("FromUserName and MsgType are required")
        agent = f.get("AgentID", "")
        if agent and agent != str(self.config.agent_id):
            log.warning(
                "wecom %s: a callback for AgentID %s, not ours (%s): ignored", self.name, agent, self.config.agent_id
            )
            return None
        if self.config.allow_users is not None and user not in self.config.allow_users:
            log.info("wecom %s: user %s is not in allow_users; ignored", self.name, user)
            return None
        if msg_type == "event":
            event = f.get("Event", "")
            if event.lower() != "subscribe":
                return None
            # Events have no MsgId; two in the same second differ by Event/EventKey.
            key = f"event:{user}:{f.get('CreateTime', '')}:{event}:{f.get('EventKey', '')}"
            return Inbound(self.name, key, user, user, "/help")  # a new follower gets the help text
        if not f.get("MsgId"):
            raise RequestError("MsgId is required")
        kind = KINDS.get(msg_type, msg_type)
        text = f.get("Content", "") if kind == "text" else ""
        return Inbound(self.name, f"msg:{f['MsgId']}", user, user, text, kind=kind)

    # -- outbound --------------------------------------------------------------------------------

    async def deliver(self, msg: Inbound, answer: Answer) -> None:
        async for _ in answer:
            pass  # app messages cannot be edited: only the whole answer is sent
        for part in split_bytes(full_text(answer, self.texts), self.config.text_limit):
            await self.api.send_text(msg.user_id, part)


def _encrypted(body: bytes) -> str:
    """The Encrypt value of a callback body (parsed without DTDs or entities)."""
    try:
        return parse_fields(body).get("Encrypt", "")
    except MalformedXML as e:
        raise RequestError(str(e)) from None
