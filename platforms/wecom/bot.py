"""WeCom smart robot (智能机器人) in API mode: JSON callbacks answered with streamed replies
(developer.work.weixin.qq.com/document/path/100719 receive, /101031 passive replies, /101033
crypto, /101138 response_url).

How the protocol streams, and what we do:
- every callback is `{"encrypt": …}` (receive id: the empty string), signed in the query like the
  app's; the GET URL verification is the same as the app's. A reply is the JSON envelope
  `{"encrypt", "msgsignature", "timestamp", "nonce"}`, signed with the callback's own nonce;
- a user message (single chat, or a group message that @-mentions the robot) is claimed by its
  `msgid` and answered at once with `{"msgtype": "stream", "stream": {"id", "finish": false,
  "content": ""}}`. The stream id is derived from the msgid, so a redelivered message gets the
  same stream back (and is not answered again);
- until a reply says `finish: true`, WeCom keeps calling back with `msgtype: stream` and that
  `stream.id` (a "stream refresh", for at most 6 minutes after the user's message); each is
  answered with the answer so far — `content` replaces what was shown, it is not appended — and
  the last with the whole answer and `finish: true`. The answer's progress is kept in memory and,
  at most once per `STORE_EVERY` seconds and at the end, in the store: a refresh that reaches
  another instance or a restarted process finds it there;
- `content` holds at most 20,480 bytes (`text_limit`); the rest of a longer answer, and an answer
  finished after `stream_window` (WeCom no longer asks for it), go through the message's
  `response_url` (usable once, for an hour) as markdown;
- voice messages arrive transcribed and are answered as text; images, files and mixed messages
  get the core's polite "text only" answer; events (enter_chat, template cards, feedback) are
  answered with an empty body. The robot only ever receives members' messages: no loop to break.

After a crash the restarted process answers the claimed message again into the same stream
(WeCom's refreshes, which carry only the stream id, find its progress in the store), within the
hour the `response_url` stays valid.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from cachetools import TTLCache
from pydantic import Field, field_validator
from yarl import URL

from platforms.wechat_mp.crypto import aes_key
from platforms.wecom.api import WeComAPIError, respond
from platforms.wecom.callback import CallbackCrypto
from platforms.wecom.text import full_text, prefix, size, split_bytes
from proxy.contracts import Answer, Platform, PlatformConfig, PlatformContext
from proxy.errors import RequestError
from proxy.http_util import json_object
from proxy.types import Inbound, WebRequest, WebResponse

log = logging.getLogger("switchboard.wecom_bot")
EMPTY = WebResponse(200, b"")
#: Seconds between two writes of an answer's progress to the store (memory has every piece).
STORE_EVERY = 1.0
#: Seconds a message's `response_url` can be used.
RESPONSE_URL_LIFE = 3600.0
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
MENTION = re.compile(r"^\s*@\S+\s*")


class WeComBotConfig(PlatformConfig):
    kind: Literal["wecom_bot"] = "wecom_bot"
    """`wecom_bot`: a WeCom smart robot (智能机器人) in API mode; answers stream into the chat."""
    default_locale = "zh"
    token: str = Field(min_length=1)
    """The Token of the robot's API settings; it signs every callback."""
    encoding_aes_key: str
    """The EncodingAESKey of the robot's API settings (43 characters); every callback is encrypted with it."""
    allow_users: list[str] | None = None
    """Member UserIDs that may use the robot (others are ignored); unset: everyone who can reach it."""
    replay_window: float = Field(300.0, gt=0)
    """Seconds a callback's signed timestamp may differ from our clock."""
    text_limit: int = Field(20480, ge=100, le=20480)
    """UTF-8 bytes a streamed reply shows (WeCom's maximum is 20,480); the rest goes through `response_url`."""
    stream_window: float = Field(330.0, gt=0, le=360)
    """Seconds after a message during which its stream is still refreshed (WeCom stops after 6 minutes); an answer
    finished later goes through `response_url` instead."""
    response_url_hosts: list[str] = ["qyapi.weixin.qq.com"]
    """Hosts a message's `response_url` may point at (https; a loopback host listed here may use http)."""

    @field_validator("encoding_aes_key")
    @classmethod
    def _key_shape(cls, v: str) -> str:
        aes_key(v)
        return v


@dataclass(frozen=True, slots=True)
class Progress:
    """What a stream shows now, and whether it is complete."""

    content: str = ""
    finish: bool = False


class WeComBotPlatform(Platform):
    config_model = WeComBotConfig
    config: WeComBotConfig
    ack_deadline = 5.0

    def __init__(self, name: str, config: WeComBotConfig, ctx: PlatformContext) -> None:
        super().__init__(name, config, ctx)
        self.crypto = CallbackCrypto(config.token, config.encoding_aes_key, "", f"wecom_bot {name}")
        self._streams: TTLCache[str, Progress] = TTLCache(maxsize=10_000, ttl=2 * 360.0)

    # -- inbound ---------------------------------------------------------------------------------

    def verify(self, request: WebRequest) -> None:
        self.crypto.verify(request, _encrypted, self.config.replay_window)

    async def receive(self, request: WebRequest) -> WebResponse:
        if request.method == "GET":
            return WebResponse(200, self.crypto.open(request.query["echostr"]))
        data = json_object(self.crypto.open(_encrypted(request.body)), "the decrypted callback")
        nonce = request.query["nonce"]
        if data.get("msgtype") == "stream":  # a stream refresh: the answer so far
            sid = str((data.get("stream") or {}).get("id") or "")
            found = await self._progress(sid) if sid else None
            return self._stream(sid, found or Progress(finish=True), nonce)  # unknown: end it
        if data.get("msgtype") == "event":
            return EMPTY
        msg = self._inbound(data)
        if msg is None:
            return EMPTY
        sid = msg.reply_to["stream"]
        if await self.ctx.accept(self, msg) is None:  # a redelivery: the same stream again
            log.info("wecom_bot %s: duplicate delivery %s", self.name, msg.event_id)
            found = await self._progress(sid)
            return EMPTY if found is None else self._stream(sid, found, nonce)
        self._streams[sid] = Progress()
        return self._stream(sid, Progress(), nonce)

    def _inbound(self, data: dict[str, Any]) -> Inbound | None:
        msgid, kind = _str(data.get("msgid")), _str(data.get("msgtype"))
        sender = data.get("from")
        user = _str(sender.get("userid")) if isinstance(sender, dict) else ""
        if not (msgid and kind and user):
            raise RequestError("msgid, msgtype and from.userid are required")
        if self.config.allow_users is not None and user not in self.config.allow_users:
            log.info("wecom_bot %s: user %s is not in allow_users; ignored", self.name, user)
            return None
        group = data.get("chattype") == "group"
        text = ""
        if kind in ("text", "voice"):  # voice arrives as its transcript
            body = data.get(kind)
            text = _str(body.get("content")) if isinstance(body, dict) else ""
            text, kind = (MENTION.sub("", text, count=1) if group else text), "text"
        elif kind == "mixed":
            kind = "image"  # text with pictures: the pictures cannot be passed on
        target = {"stream": stream_id(msgid), "response_url": self._response_url(data), "at": time.time()}
        return Inbound(
            self.name,
            f"msg:{msgid}",
            _str(data.get("chatid")) or user,
            user,
            text,
            kind=kind,
            direct=not group,
            reply_to=target,
        )

    def _response_url(self, data: dict[str, Any]) -> str | None:
        """The message's `response_url` when it points at an allowed host, else None."""
        raw = _str(data.get("response_url"))
        if not raw:
            return None
        url = URL(raw)
        host = url.host or ""
        secure = url.scheme == "https" or (url.scheme == "http" and host in LOOPBACK)
        if secure and host in self.config.response_url_hosts and not url.user and not url.password:
            return raw
        log.warning("wecom_bot %s: a response_url on host %r ignored (not in response_url_hosts)", self.name, host)
        return None

    def resumable(self, msg: Inbound, claimed_at: float) -> bool:
        """Within the hour its `response_url` is valid (the stream itself ends after 6 minutes)."""
        return time.time() - claimed_at < RESPONSE_URL_LIFE

    # -- the stream ------------------------------------------------------------------------------

    def _stream(self, sid: str, progress: Progress, nonce: str) -> WebResponse:
        plain = {"msgtype": "stream", "stream": {"id": sid, "finish": progress.finish, "content": progress.content}}
        encrypted, sig, ts = self.crypto.seal(orjson.dumps(plain), nonce)
        body = {"encrypt": encrypted, "msgsignature": sig, "timestamp": int(ts), "nonce": nonce}
        return WebResponse(200, orjson.dumps(body), "application/json")

    async def _progress(self, sid: str) -> Progress | None:
        found = self._streams.get(sid)
        if found is not None:
            return found
        raw = await self.ctx.store.get(self._key(sid))
        if raw is None:
            return None
        data = orjson.loads(raw)
        return Progress(str(data.get("content", "")), bool(data.get("finish")))

    async def _show(self, sid: str, progress: Progress, *, store: bool) -> None:
        self._streams[sid] = progress
        if store:
            value = orjson.dumps({"content": progress.content, "finish": progress.finish}).decode()
            await self.ctx.store.put(self._key(sid), value, RESPONSE_URL_LIFE)

    def _key(self, sid: str) -> str:
        return f"wecom_bot:{self.name}:stream:{sid}"

    # -- outbound --------------------------------------------------------------------------------

    async def deliver(self, msg: Inbound, answer: Answer) -> None:
        target = msg.reply_to
        sid, url, at = str(target["stream"]), target.get("response_url"), float(target.get("at") or 0)
        limit = self.config.text_limit
        await self._show(sid, Progress(), store=True)
        last, shown = time.monotonic(), ""
        async for _ in answer:
            if size(shown) + 4 <= limit or not answer.text.startswith(shown):  # else: the stream is full
                shown = prefix(answer.text, limit)
            due = time.monotonic() - last >= STORE_EVERY
            await self._show(sid, Progress(shown), store=due)
            last = time.monotonic() if due else last
        parts = split_bytes(full_text(answer, self.texts), limit)
        late = time.time() - at > self.config.stream_window
        await self._show(sid, Progress(parts[0] if parts else "", finish=True), store=True)
        rest = parts if late else parts[1:]  # a late answer: WeCom no longer asks for the stream
        if not rest:
            return
        if url is None:
            raise WeComAPIError("the answer does not fit the stream and the message has no usable response_url")
        if len(rest) > 1:
            log.warning("wecom_bot %s: %d parts of a long answer dropped (one response_url)", self.name, len(rest) - 1)
        await respond(self.ctx.http, url, rest[0])


def stream_id(msgid: str) -> str:
    """The stream of a message: the same for every delivery of it (and after a restart)."""
    return hashlib.sha256(msgid.encode("utf-8")).hexdigest()[:32]


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _encrypted(body: bytes) -> str:
    """The `encrypt` value of a callback body."""
    value = json_object(body).get("encrypt")
    return value if isinstance(value, str) else ""
