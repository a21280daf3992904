"""WeChat Official Account (公众号) server-configuration webhook, plaintext or safe mode.

Protocol quirks handled here (reference section 3):
- Every request carries signature = sha1(sorted(token, timestamp, nonce)) in the query. It does
  not cover the body, so we also enforce a replay window on `timestamp`; in safe mode the body
  is covered by `msg_signature` over (token, timestamp, nonce, Encrypt).
- WeChat waits 5 s for a passive reply and delivers a message 3 times in all. We wait up to
  `reply_wait` for the answer; if it is not ready we leave the delivery open (never "please
  wait"), so WeChat delivers again and the answer goes out on whichever delivery is waiting when
  it is ready. On the last delivery we answer `success` and push the answer through the
  customer-service API, or, without an app secret, say it is coming and serve it when the user
  sends "1".
- Behind a load balancer each delivery may reach another instance (a shared Redis store). The
  deliveries are numbered in the store; a newer one releases the older ones over the bus
  (`proxy/bus.py`); the instance that made the answer stores it and announces it, so the delivery
  waiting on any instance replies with it. Whether an answer goes in a passive reply or is pushed
  is decided once per message by a store claim (the message's "fate") that both the last
  delivery giving up and the finished answer try to take, so it goes out one way, once.
- One passive reply per message, so a long answer's first `text_limit` characters go in it and
  the rest through the customer-service API (or "1").

After a crash (proxy/claims.py, proxy/recovery.py): the restarted process takes over the claims
of the previous run at start-up (SQLite/memory store: `release_others`) and answers them. A
WeChat retry that reaches it while the answer is being generated waits for it like any
redelivery and gets it as the passive reply; without a retry (or after the passive-reply window)
the answer goes through the customer-service API when `app_id`/`app_secret` are set, else it is
kept for "1". With a shared (Redis) store a dead instance's lease must run out first (a retry
meanwhile waits, then gets `success`/"send 1"), so keep `server.claim_lease` short there.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any, Literal

import orjson
from cachetools import TTLCache
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from platforms.wechat_mp.api import CustomerService, WeChatAPIError
from platforms.wechat_mp.crypto import DecryptError, WeChatCipher, aes_key, signature, signature_ok
from platforms.wechat_mp.pending import Pending, Ready
from platforms.wechat_mp.xml import MalformedXML, encrypted_reply, parse_fields, text_reply
from proxy.contracts import Answer, ClaimState, Platform, PlatformConfig, PlatformContext
from proxy.errors import RequestError, VerificationError
from proxy.text import split_text
from proxy.types import Inbound, WebRequest, WebResponse
from proxy.verify import within_window

log = logging.getLogger("switchboard.wechat_mp")

SUCCESS = WebResponse(200, b"success")
#: For a delivery WeChat has already dropped: nobody reads it.
DROPPED = WebResponse(200, b"")
KINDS = {"shortvideo": "video"}
#: Seconds a delivery that lost the hand-off to `deliver` waits for the answer it is storing.
STORE_GRACE = 0.3


class MenuConfig(BaseModel):
    """What a custom-menu `CLICK` button (its `key`) does: answer a fixed text, or ask a prompt."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    text: str | None = None
    """Answered as it is (no model call)."""
    prompt: str | None = None
    """Sent to the model as if the user had written it; the answer arrives like any answer."""
    channel: str | None = None
    """The channel that answers `prompt` (unset: the channel the account's messages route to)."""

    @model_validator(mode="after")
    def _one_action(self) -> MenuConfig:
        if (self.text is None) == (self.prompt is None):
            raise ValueError("give either text or prompt")
        if self.channel is not None and self.prompt is None:
            raise ValueError("channel goes with prompt")
        return self


class WeChatMPConfig(PlatformConfig):
    kind: Literal["wechat_mp"] = "wechat_mp"
    """`wechat_mp`: a WeChat Official Account's message server."""
    default_locale = "zh"
    token: str = Field(min_length=1)
    """The Token set in the account's server configuration; it signs every request."""
    app_id: str | None = None
    """The account's AppID; needed with `encoding_aes_key` or `app_secret`."""
    app_secret: str | None = None
    """The account's AppSecret, for the customer-service message API (answers later than WeChat's 5 s)."""
    encoding_aes_key: str | None = None
    """When set, safe mode: bodies must be encrypted and replies are encrypted."""
    api_base: str = "https://api.weixin.qq.com"
    """WeChat API root (tests point it at a fake)."""
    replay_window: float = Field(300.0, gt=0)
    """Seconds a signed timestamp may differ from our clock."""
    reply_wait: float = Field(4.5, gt=0, lt=5)
    """Seconds a delivery waits for the answer before it gives up on it (< WeChat's 5 s)."""
    hold_max: float = Field(10.0, gt=0)
    """Seconds an unanswered delivery stays open waiting for WeChat's next delivery."""
    deliveries: int = Field(3, ge=1, le=10)
    """Deliveries WeChat makes of one message; the last one hands the answer off."""
    text_limit: int = Field(2000, ge=100, le=20000)
    """Characters per message. WeChat documents no current limit for text; an old doc mirror says about 2,048 bytes.
    2,000 characters keeps Latin text whole in one message; lower it (e.g. to 680) if replies are mostly Chinese and
    a byte limit bites."""
    answer_ttl: float = Field(600.0, gt=0)
    """Seconds a finished answer is kept per MsgId for retries that arrive after a restart."""
    later_ttl: float = Field(2 * 86400.0, gt=0)
    """Seconds an answer waits for the user's "1"."""
    menus: dict[str, MenuConfig] = {}
    """Custom-menu `CLICK` buttons by key: `{text: …}` answers that text, `{prompt: …, channel: …}` asks the model;
    `VIEW` (link) buttons and unknown keys are not answered."""

    def channel_refs(self) -> dict[str, str]:
        return {f"menus.{key}.channel": m.channel for key, m in self.menus.items() if m.channel}

    @field_validator("app_id", "app_secret", "encoding_aes_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("encoding_aes_key")
    @classmethod
    def _key_shape(cls, v: str | None) -> str | None:
        if v is not None:
            aes_key(v)
        return v

    @model_validator(mode="after")
    def _needs_app_id(self) -> WeChatMPConfig:
        if (self.encoding_aes_key or self.app_secret) and not self.app_id:
            raise ValueError("app_id is required with encoding_aes_key or app_secret")
        return self


class WeChatMPPlatform(Platform):
    config_model = WeChatMPConfig
    config: WeChatMPConfig

    def __init__(self, name: str, config: WeChatMPConfig, ctx: PlatformContext) -> None:
        super().__init__(name, config, ctx)
        self._cipher = WeChatCipher(config.encoding_aes_key, config.app_id or "") if config.encoding_aes_key else None
        self._cs: CustomerService | None = None
        self._pending: TTLCache[str, Pending] = TTLCache(maxsize=10_000, ttl=max(120.0, 4 * config.hold_max))

    async def start(self) -> None:
        self.ctx.bus.on(f"{self.name}:delivery", self._remote_delivery)
        self.ctx.bus.on(f"{self.name}:ready", self._remote_ready)
        if self.config.app_id and self.config.app_secret:
            self._cs = CustomerService(self.ctx.http, self.config.api_base, self.config.app_id, self.config.app_secret)

    def help_text(self) -> str | None:
        return None if self.config.app_secret else self.texts["wechat_help"]

    # -- inbound ---------------------------------------------------------------------------------

    def verify(self, request: WebRequest) -> None:
        q = request.query
        sig, ts, nonce = q.get("signature", ""), q.get("timestamp", ""), q.get("nonce", "")
        if not (sig and ts and nonce) or not signature_ok(sig, self.config.token, ts, nonce):
            raise VerificationError("wechat_mp: bad or missing signature", 403)
        within_window(ts, self.config.replay_window, what="wechat_mp: timestamp", status=403)

    async def receive(self, request: WebRequest) -> WebResponse:
        q = request.query
        if request.method == "GET":
            if "echostr" not in q:
                raise RequestError("echostr is missing")
            return WebResponse(200, q["echostr"].encode("utf-8"))
        fields = self._open(request.body, q)
        return await self._on_message(fields, Replier(fields, self._cipher, self.config.token))

    def _open(self, body: bytes, query: Mapping[str, str]) -> dict[str, str]:
        """The message fields: parsed safely, and in safe mode checked and decrypted."""
        try:
            outer = parse_fields(body)
        except MalformedXML as e:
            raise RequestError(str(e)) from None
        if self._cipher is None:
            if "Encrypt" in outer and "MsgType" not in outer:
                raise RequestError("an encrypted message arrived but no encoding_aes_key is configured")
            return outer
        encrypt, msg_sig = outer.get("Encrypt", ""), query.get("msg_signature", "")
        if not encrypt or not msg_sig:
            raise VerificationError("wechat_mp: safe mode needs Encrypt and msg_signature", 403)
        if not signature_ok(msg_sig, self.config.token, query["timestamp"], query["nonce"], encrypt):
            raise VerificationError("wechat_mp: bad msg_signature", 403)
        try:
            inner = self._cipher.decrypt(encrypt)
        except DecryptError as e:
            raise VerificationError(f"wechat_mp: cannot decrypt: {e}", 403) from None
        try:
            return parse_fields(inner)
        except MalformedXML as e:
            raise RequestError(str(e)) from None

    def _to_inbound(self, f: dict[str, str]) -> Inbound | None:
        """The message as the core sees it, or None for what we do not answer."""
        open_id, msg_type = f.get("FromUserName", ""), f.get("MsgType", "")
        if not open_id or not msg_type or not f.get("ToUserName"):
            raise RequestError("FromUserName, ToUserName and MsgType are required")
        if msg_type == "event":
            event = f.get("Event", "")
            # Events have no MsgId; two in the same second differ by Event/EventKey.
            key = f"event:{open_id}:{f.get('CreateTime', '')}:{event}:{f.get('EventKey', '')}"
            if event.lower() == "subscribe":
                return Inbound(self.name, key, open_id, open_id, "/help")  # a new follower gets the help text
            menu = self.config.menus.get(f.get("EventKey", "")) if event.upper() == "CLICK" else None
            if menu is None or menu.prompt is None:  # VIEW, other events, unknown or text buttons
                if event.upper() == "CLICK" and menu is None:
                    log.info("%s: menu key %r is not configured; not answered", self.name, f.get("EventKey", ""))
                return None
            return Inbound(self.name, key, open_id, open_id, menu.prompt, channel=menu.channel)
        if not f.get("MsgId"):
            raise RequestError("MsgId is required")
        kind = KINDS.get(msg_type, msg_type)
        text = f.get("Content", "") if kind == "text" else ""
        return Inbound(self.name, f"msg:{f['MsgId']}", open_id, open_id, text, kind=kind)

    async def _on_message(self, fields: dict[str, str], replier: Replier) -> WebResponse:
        text = self._menu_text(fields)
        if text is not None:  # the same passive reply to every delivery: WeChat shows one
            return replier.text(text)
        msg = self._to_inbound(fields)
        if msg is None:
            return SUCCESS
        key = msg.event_id
        pending = self._pending.get(key)
        if pending is not None:  # WeChat's next delivery of a message being answered here
            return await self._wait(key, pending, await self._arrived(key, pending), replier)
        # Registered before any await, so a concurrent duplicate delivery waits on this one.
        pending = self._pending[key] = Pending(msg.chat_id)
        number = await self._arrived(key, pending)
        claim = await self.ctx.claim(key)
        if claim.state is ClaimState.IN_FLIGHT:
            # being answered by another instance (or a recovered job): the answer comes over the
            # bus, or was stored just before this delivery started listening for it
            stored = await self._stored(key)
            if stored is not None:
                pending.set(stored)
            return await self._wait(key, pending, number, replier)
        if not claim:  # answered before (on another instance, or before a restart)
            stored = await self._stored(key)
            pending.set(stored or Ready(""))
            return replier.text(stored.first) if stored and stored.first else SUCCESS
        if msg.kind == "text" and msg.text.strip() == "1":
            served = await self._serve_later(msg.chat_id)
            if served is not None:
                await self._store_answer(key, Ready(served))
                await self.ctx.settle(key)  # answered here: a retry gets the stored answer
                pending.set(Ready(served))
                return replier.text(served)
        self.ctx.submit(self, msg)
        return await self._wait(key, pending, number, replier)

    def _menu_text(self, f: dict[str, str]) -> str | None:
        """The fixed text of a configured `CLICK` menu button, if this is one."""
        if f.get("MsgType") != "event" or f.get("Event", "").upper() != "CLICK":
            return None
        menu = self.config.menus.get(f.get("EventKey", ""))
        return menu.text if menu is not None else None

    async def _arrived(self, key: str, pending: Pending) -> int:
        """Number this delivery of `key` among all deliveries to every instance (a store claim
        per number: concurrent deliveries get different ones), and release the older deliveries
        still waiting, here and on the other instances."""
        number = self.config.deliveries
        for i in range(1, self.config.deliveries + 1):
            if await self.ctx.store.claim(self._key(f"d{i}", key), self.config.answer_ttl):
                number = i
                break
        pending.arrived(number)
        if number > 1 and self.ctx.bus.active:
            await self.ctx.bus.publish(f"{self.name}:delivery", {"key": key, "n": number})
        return number

    async def _wait(self, key: str, pending: Pending, number: int, replier: Replier) -> WebResponse:
        pending.waiting += 1
        try:
            return await self._reply(key, pending, number, replier)
        finally:
            pending.waiting -= 1

    async def _reply(self, key: str, pending: Pending, number: int, replier: Replier) -> WebResponse:
        ready = await pending.wait(self.config.reply_wait)
        last = number >= self.config.deliveries
        if ready is None and not last:
            ready = await pending.hold(number, self.config.hold_max)
            if ready is None and pending.deliveries > number:
                return DROPPED  # a newer delivery took over; WeChat no longer reads this one
        if ready is None:
            ready = await self._give_up(key, pending)
            if ready is None:  # `deliver` will push it (or keep it for "1")
                return SUCCESS if self._cs else replier.text(self.texts["wechat_coming"])
        if ready.rest and self._cs and await self.ctx.store.claim(self._key("rest", key), self.config.answer_ttl):
            self.ctx.spawn(self._send_later(pending.open_id, list(ready.rest)), "customer-service")
        return replier.text(ready.first) if ready.first else SUCCESS

    async def _give_up(self, key: str, pending: Pending) -> Ready | None:
        """No delivery will be open when the answer is ready: hand it off to `deliver`
        (customer-service API or "1"), unless the answer is there after all — then it is
        returned. Across instances, a delivery that gives up and `deliver` both claim the
        message's fate; `deliver` replies passively only when it wins, or when a delivery is
        waiting in its own process (this one, until it returns), so an answer goes out one way."""
        won = await self.ctx.store.claim(self._key("fate", key), self.config.answer_ttl)
        if won:
            await self.ctx.store.put(self._key("working", pending.open_id), key, self.config.later_ttl)
        found = pending.ready()
        if found is None and not won:  # `deliver` won (its answer is stored) or another delivery did
            found = await self._stored(key)
            if found is None:
                found = await pending.wait(STORE_GRACE) or await self._stored(key)
        if found is not None and won:
            await self.ctx.store.delete(self._key("working", pending.open_id))
        return found or pending.ready()  # no await since the last look: `deliver` cannot slip in

    # -- outbound --------------------------------------------------------------------------------

    async def deliver(self, msg: Inbound, answer: Answer) -> None:
        async for _ in answer:
            pass  # a passive reply cannot be edited: only the whole answer is useful
        text = "\n".join([answer.text, *answer.images]).strip()
        note = 0 if self._cs else len(self.texts["wechat_more"])
        parts = split_text(text, self.config.text_limit - note)
        key = msg.event_id
        pending = self._pending.get(key)
        won = await self.ctx.store.claim(self._key("fate", key), self.config.answer_ttl)
        if pending is None or not (won or pending.waiting):
            # the last delivery gave up on it, or none is waiting here (a recovered answer, or one
            # that took longer than this process remembers deliveries). A delivery arriving from
            # now on finds this empty answer and says `success` at once, instead of holding on
            # for an answer that goes out by push.
            await self._release(key, Ready(""))
            await self._send_later(msg.chat_id, parts)
            await self.ctx.store.delete(self._key("working", msg.chat_id))
            return
        ready = Ready(parts[0] if parts else "", tuple(parts[1:]))
        if ready.rest and not self._cs:
            await self._keep_for_later(msg.chat_id, list(ready.rest))
            ready = Ready(ready.first + self.texts["wechat_more"])
        await self._release(key, ready)
        if not won:  # a delivery that gave up earlier left its note; one is waiting here now
            await self.ctx.store.delete(self._key("working", msg.chat_id))

    async def _release(self, key: str, ready: Ready) -> None:
        """Store the answer's passive part and hand it to the deliveries waiting for it, here and
        (over the bus) on the other instances; an empty one makes them answer `success`."""
        await self._store_answer(key, ready)
        pending = self._pending.get(key)
        if pending is not None:
            pending.set(ready)
        if self.ctx.bus.active:  # the delivery waiting now may be on another instance
            news = {"key": key, "first": ready.first, "rest": list(ready.rest)}
            await self.ctx.bus.publish(f"{self.name}:ready", news)

    def _remote_delivery(self, data: dict[str, Any]) -> None:
        pending = self._pending.get(str(data.get("key")))
        if pending is not None and isinstance(data.get("n"), int):
            pending.arrived(data["n"])

    def _remote_ready(self, data: dict[str, Any]) -> None:
        pending = self._pending.get(str(data.get("key")))
        first, rest = data.get("first"), data.get("rest")
        if pending is not None and isinstance(first, str) and isinstance(rest, list):
            pending.set(Ready(first, tuple(str(r) for r in rest)))

    async def _store_answer(self, key: str, ready: Ready) -> None:
        value = orjson.dumps([ready.first, *ready.rest]).decode()
        await self.ctx.store.put(self._key("answer", key), value, self.config.answer_ttl)

    async def _stored(self, key: str) -> Ready | None:
        raw = await self.ctx.store.get(self._key("answer", key))
        if raw is None:
            return None
        try:
            parts = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return Ready(raw)  # stored by an earlier version: the passive part as plain text
        if not isinstance(parts, list) or not parts:
            return Ready(raw)
        return Ready(str(parts[0]), tuple(str(p) for p in parts[1:]))

    async def _send_later(self, open_id: str, parts: list[str]) -> None:
        sent = await self._push(open_id, parts) if self._cs else 0
        if sent < len(parts):
            await self._keep_for_later(open_id, parts[sent:])
            if self._cs is None:  # e.g. an answer recovered after a crash, past every passive reply
                log.info('%s: an answer waits for its user to send "1" (no app_secret configured)', self.name)

    async def _push(self, open_id: str, parts: list[str]) -> int:
        """Send through the customer-service API; how many parts went out."""
        assert self._cs is not None
        for i, part in enumerate(parts):
            try:
                await self._cs.send_text(open_id, part)
            except WeChatAPIError as e:
                log.warning('%s: customer-service message failed (%s); kept for "1"', self.name, e)
                return i
        return len(parts)

    async def _keep_for_later(self, open_id: str, parts: list[str]) -> None:
        await self.ctx.store.put(self._later_key(open_id), orjson.dumps(parts).decode(), self.config.later_ttl)

    async def _serve_later(self, open_id: str) -> str | None:
        """The reply to "1": the next kept part, a "still working" note, or None (a normal "1")."""
        raw = await self.ctx.store.get(self._later_key(open_id))
        parts = orjson.loads(raw) if raw else []
        if parts:
            if len(parts) > 1:
                await self._keep_for_later(open_id, parts[1:])
                return str(parts[0]) + self.texts["wechat_more"]
            await self.ctx.store.delete(self._later_key(open_id))
            return str(parts[0])
        waiting = await self.ctx.store.get(self._key("working", open_id)) is not None
        return self.texts["wechat_still_working"] if waiting else None

    def _key(self, what: str, key: str) -> str:
        """Store keys of this account: `answer`/`fate`/`rest`/`d<n>` per message, `working` and
        `later` per user."""
        return f"wechat_mp:{self.name}:{what}:{key}"

    def _later_key(self, open_id: str) -> str:
        return self._key("later", open_id)


class Replier:
    """Renders passive replies to one inbound message (encrypted in safe mode)."""

    def __init__(self, fields: dict[str, str], cipher: WeChatCipher | None, token: str) -> None:
        self._to, self._from = fields.get("FromUserName", ""), fields.get("ToUserName", "")
        self._cipher, self._token = cipher, token

    def text(self, content: str) -> WebResponse:
        xml = text_reply(self._to, self._from, content)
        if self._cipher is not None:
            ts, nonce = str(int(time.time())), secrets.token_hex(8)
            encrypt = self._cipher.encrypt(xml.encode("utf-8"))
            xml = encrypted_reply(encrypt, signature(self._token, ts, nonce, encrypt), ts, nonce)
        return WebResponse(200, xml.encode("utf-8"), "application/xml; charset=utf-8")
