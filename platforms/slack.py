"""Slack: Events API (`message.im`, `app_mention`) and message shortcuts, on one Request URL.

Quirks handled (reference: shared/reference/platforms.md §1):
- every request is signed: HMAC-SHA256 of `v0:{timestamp}:{raw body}` with the signing secret,
  checked on the raw bytes in constant time, timestamp within 5 minutes either way;
- Slack retries after 3 s, so we ack at once and dedupe on `event_id`, and on channel+ts because
  one @-message in a DM-less channel can arrive both as `message` and `app_mention`;
- our own posts and edits come back as events: anything with a `bot_id`, from our bot user, or
  with a subtype we do not handle is ignored (no reply loops);
- answers stream into a placeholder with `chat.update`, at most once per `update_interval`
  seconds (Tier 3), 429 `Retry-After` honoured; the final edit holds the whole answer, overflow
  goes to further thread replies;
- shortcuts arrive form-encoded (`payload=<json>`): `stop_generating` stops a streaming answer,
  `delete_message` deletes a message our bot posted.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from typing import Any, Literal
from urllib.parse import parse_qs

import orjson
from cachetools import TTLCache
from pydantic import Field

from platforms.slack_api import SlackAPI, SlackAPIError
from proxy.contracts import AdapterConfig, Answer, Job, Platform
from proxy.errors import RequestError, VerificationError
from proxy.text import split_text
from proxy.types import Inbound, WebRequest, WebResponse

log = logging.getLogger("switchboard.slack")
MENTION = re.compile(r"<@[A-Z0-9]+(?:\|[^>]*)?>")
HANDLED_SUBTYPES = {None, "file_share", "thread_broadcast"}
OK = WebResponse(200, b"")


class SlackConfig(AdapterConfig):
    kind: Literal["slack"] = "slack"
    signing_secret: str = Field(min_length=1)
    bot_token: str = Field(min_length=1)
    api_base: str = "https://slack.com/api"
    #: Seconds between streamed edits of one message (Slack's chat.update is Tier 3: ~1/s).
    update_interval: float = Field(1.0, ge=0)
    replay_window: int = Field(300, ge=1)
    placeholder: str = "…"
    stop_callback: str = "stop_generating"
    delete_callback: str = "delete_message"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


class SlackPlatform(Platform):
    config_model = SlackConfig
    text_limit = 3900  # Slack truncates above 40k; long sections render badly well before that

    async def start(self) -> None:
        self.api = SlackAPI(self.ctx.http, self.config.api_base, self.config.bot_token)
        self.bot_user: str | None = await self.api.bot_user_id()
        self.jobs: TTLCache[str, Job] = TTLCache(maxsize=10_000, ttl=3600)  # event_id -> job
        self.streaming: TTLCache[str, str] = TTLCache(maxsize=10_000, ttl=3600)  # posted ts -> event_id
        self.ours: TTLCache[str, bool] = TTLCache(maxsize=50_000, ttl=7 * 86400)  # ts we posted

    # -- inbound -----------------------------------------------------------------------------

    def verify(self, req: WebRequest) -> None:
        ts, sig = req.headers.get("x-slack-request-timestamp"), req.headers.get("x-slack-signature")
        if not ts or not sig:
            raise VerificationError("missing Slack signature headers")
        try:
            age = abs(time.time() - int(ts))
        except ValueError:
            raise VerificationError("timestamp is not a number") from None
        if age > self.config.replay_window:
            raise VerificationError(f"timestamp outside the {self.config.replay_window}s window")
        if not hmac.compare_digest(signature(self.config.signing_secret, ts, req.body), sig):
            raise VerificationError("signature mismatch")

    async def handle(self, request: WebRequest) -> WebResponse:
        form = "application/x-www-form-urlencoded" in request.headers.get("content-type", "")
        if request.query.get("ssl_check") == "1" or (form and b"ssl_check=1" in request.body[:64]):
            return OK
        self.verify(request)
        if form:
            return await self._interactive(request.body)
        try:
            data = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            raise RequestError("body is not JSON") from None
        if not isinstance(data, dict):
            raise RequestError("body is not a JSON object")
        if data.get("type") == "url_verification":
            return WebResponse(200, orjson.dumps({"challenge": data.get("challenge", "")}), "application/json")
        if data.get("type") == "event_callback":
            await self._event(data)
        return OK

    async def _event(self, data: dict[str, Any]) -> None:
        ev = data.get("event") or {}
        event_id = str(data.get("event_id") or "")
        if not event_id or not await self.ctx.claim(event_id):
            return  # a retry or duplicate: answered (or being answered) already
        msg = self._parse(ev, event_id, data)
        if msg is None or not await self.ctx.claim(f"{msg.chat_id}:{ev.get('ts')}"):
            return
        self.jobs[event_id] = self.ctx.submit(self, msg)

    def _parse(self, ev: dict[str, Any], event_id: str, data: dict[str, Any]) -> Inbound | None:
        kind = ev.get("type")
        direct = ev.get("channel_type") == "im"
        if kind not in ("message", "app_mention") or (kind == "message" and not direct):
            return None
        if ev.get("subtype") not in HANDLED_SUBTYPES or ev.get("bot_id") or ev.get("bot_profile"):
            return None
        own = self.bot_user or _authorized_bot(data)
        user = ev.get("user")
        if not user or user == own:
            return None
        text = MENTION.sub("", ev.get("text") or "").strip()
        files = ev.get("files") or []
        what = "text"
        if not text and files:
            what = "image" if str(files[0].get("mimetype", "")).startswith("image/") else "file"
        thread = ev.get("thread_ts") or ev.get("ts")
        return Inbound(
            self.name,
            event_id,
            str(ev.get("channel")),
            str(user),
            text,
            kind=what,
            direct=direct,
            thread_id=thread,
            reply_to={"channel": ev.get("channel"), "thread_ts": thread},
        )

    async def _interactive(self, body: bytes) -> WebResponse:
        try:
            payload = orjson.loads(parse_qs(body.decode())["payload"][0])
        except (KeyError, IndexError, UnicodeDecodeError, orjson.JSONDecodeError):
            raise RequestError("interactivity body has no JSON payload") from None
        if payload.get("type") != "message_action":
            return OK
        channel = (payload.get("channel") or {}).get("id")
        message = payload.get("message") or {}
        ts, callback = message.get("ts"), payload.get("callback_id")
        if callback == self.config.stop_callback:
            job = self.jobs.get(self.streaming.get(str(ts), ""))
            if job is not None:
                job.stop()
        elif callback == self.config.delete_callback and channel and ts:
            if ts in self.ours or (self.bot_user and message.get("user") == self.bot_user):
                self.ctx.spawn(self._delete(channel, ts), f"delete:{ts}")
            else:
                log.info("refused to delete %s: not posted by this bot", ts)
        return OK

    async def _delete(self, channel: str, ts: str) -> None:
        try:
            await self.api.delete(channel, ts)
        except SlackAPIError as e:
            log.warning("chat.delete failed: %s", e)

    # -- outbound ----------------------------------------------------------------------------

    async def deliver(self, msg: Inbound, answer: Answer) -> None:
        channel, thread = msg.reply_to["channel"], msg.reply_to["thread_ts"]
        ts = await self.api.post(channel, self.config.placeholder, thread)
        self.ours[ts] = True
        self.streaming[ts] = msg.event_id
        shown, last = self.config.placeholder, time.monotonic()
        async for _ in answer:
            now = time.monotonic()
            if now - last < self.config.update_interval:
                continue
            head = (split_text(answer.text, self.text_limit) or [""])[0]
            if head and head != shown:
                try:
                    await self.api.update(channel, ts, head + " …")
                    shown = head
                except SlackAPIError as e:
                    log.warning("streaming edit failed: %s", e)
                last = time.monotonic()
        self.streaming.pop(ts, None)
        parts = split_text(answer.text, self.text_limit) or ["(no answer)"]
        if answer.stopped:
            parts[-1] += "\n_(stopped)_"
        await self.api.update(channel, ts, parts[0])
        for part in parts[1:]:
            self.ours[await self.api.post(channel, part, thread)] = True

    def help_text(self) -> str | None:
        return "In channels, mention me; in a thread I keep the thread's context."


def _authorized_bot(data: dict[str, Any]) -> str | None:
    auth = (data.get("authorizations") or [{}])[0]
    return auth.get("user_id") if auth.get("is_bot") else None
