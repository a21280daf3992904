"""Slack: Events API (`message.im`, `app_mention`) and message shortcuts on one Request URL, or
the same over Socket Mode (`app_token`): an outbound WebSocket, no public URL needed. Envelopes
are handled like the requests they stand for and acknowledged once claimed and submitted; the
core's supervisor (proxy/connections.py) makes the connection again when it drops.

Quirks handled (reference: shared/reference/platforms.md §1):
- every request is signed (platforms/slack/signing.py), interactivity too: checked on the raw
  bytes before anything is decoded; `ssl_check=1` probes are answered 200 and nothing else;
- Slack retries after 3 s (`X-Slack-Retry-Num`), so we ack at once and dedupe persistently on
  `event_id`, and on channel+ts because one message can arrive as `message` and `app_mention`;
- answers stream into a placeholder with `chat.update`, at most once per `update_interval`
  (Tier 3); a 429 pushes the next edit past its `Retry-After`; the final edit holds the whole
  first part, the rest goes to further thread replies;
- shortcuts: `stop_generating` stops the answer streaming into that message, `delete_message`
  deletes a message our bot posted (and stops it first if it is still streaming).

After a crash (claims and recovery: proxy/claims.py, proxy/recovery.py): Slack was acknowledged,
so it does not retry; the restarted process answers the message itself, at start-up or when the
lease runs out, however old the thread (`server.recover_within` bounds it). The placeholder's ts
is noted on the claim before anything streams into it, so a recovered answer edits that "…"
message instead of posting a second one (a crash between posting it and noting it leaves a "…"
behind); the continuation parts of a long answer already posted are noted too.
With several instances (a shared Redis store) a stop or delete shortcut may reach another
instance than the one streaming the answer: it is passed on over the bus (`proxy/bus.py`) and
the streaming instance stops; the instance that got a delete deletes the message itself, and the
streaming one, finding its message gone, posts nothing more. Our own messages are recognised on
every instance by the bot's user and bot ids (`auth.test` at start-up), not only by `posted`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import orjson
from cachetools import TTLCache
from pydantic import Field, model_validator

from platforms.slack.api import SlackAPI, SlackAPIError, SlackRateLimited
from platforms.slack.events import Shortcut, SlackThread, escape, form_fields, parse_event, parse_shortcut
from platforms.slack.signing import REPLAY_WINDOW, signature, verify_request
from platforms.slack.thread import ThreadReader
from proxy.connections import json_objects
from proxy.contracts import Answer, Job, Platform, PlatformConfig, PlatformContext
from proxy.edits import stream_edits
from proxy.errors import RequestError, VerificationError
from proxy.http_util import json_object
from proxy.text import split_text
from proxy.types import Inbound, Message, WebRequest, WebResponse

__all__ = ["SlackConfig", "SlackPlatform", "signature"]

log = logging.getLogger("switchboard.slack")
EMPTY_OK = WebResponse(200, b"")
FORM = "application/x-www-form-urlencoded"


class SlackConfig(PlatformConfig):
    kind: Literal["slack"] = "slack"
    """`slack`: Slack Events API, interactivity and shortcuts."""
    signing_secret: str | None = Field(None, min_length=1)
    """The app's signing secret; requests whose `X-Slack-Signature` does not match are refused. Needed for the
    Events API (a Request URL); Socket Mode alone needs only `app_token`."""
    app_token: str | None = Field(None, min_length=1)
    """An app-level token (`xapp-…`, scope `connections:write`): Socket Mode, an outbound WebSocket instead of a
    public Request URL (events, shortcuts and streaming edits as with the Events API)."""
    bot_token: str = Field(min_length=1)
    """The bot user OAuth token (`xoxb-…`) for chat.postMessage / chat.update."""
    api_base: str = "https://slack.com/api"
    """Slack Web API root (tests point it at a fake)."""
    update_interval: float = Field(1.0, ge=0)
    """Seconds between streamed edits of one message (chat.update is Tier 3: about 1/s)."""
    replay_window: int = Field(REPLAY_WINDOW, ge=1, le=REPLAY_WINDOW)
    """Seconds a signed request's timestamp may be off (at most Slack's 300)."""
    text_limit: int = Field(3900, ge=20, le=40_000)
    """Characters per message; longer answers continue in further thread replies."""
    max_retry_wait: float = Field(30.0, ge=0)
    """Longest Retry-After we wait for before giving up on a call."""
    placeholder: str = "…"
    """Text posted at once and then replaced by the streamed answer."""
    stopped_note: str = "_(stopped)_"
    """Appended to an answer that was stopped with the stop shortcut."""
    stop_callback: str = "stop_generating"
    """Callback id of the message shortcut that stops a generation."""
    delete_callback: str = "delete_message"
    """Callback id of the message shortcut that deletes one of the bot's messages."""
    thread_context: Literal["transcript", "slack"] = "transcript"
    """The history of an answer in a thread: `transcript` (the bot's own exchanges, as stored) or `slack` (the
    thread's earlier messages read from Slack with `conversations.replies`, other people's included and named;
    needs the `channels:history` / `groups:history` / `im:history` and `users:read` scopes); bounded by the channel's
    `history`; when Slack cannot say (an error, a 429), the stored transcript."""

    @model_validator(mode="after")
    def _a_way_in(self) -> SlackConfig:
        if self.signing_secret is None and self.app_token is None:
            raise ValueError("set signing_secret (Events API) or app_token (Socket Mode), or both")
        return self


class SlackPlatform(Platform):
    config_model = SlackConfig

    def __init__(self, name: str, config: SlackConfig, ctx: PlatformContext) -> None:
        super().__init__(name, config, ctx)
        self.api = SlackAPI(lambda: ctx.http, config.api_base, config.bot_token, max_wait=config.max_retry_wait)
        self.app_api = SlackAPI(lambda: ctx.http, config.api_base, config.app_token) if config.app_token else None
        self.bot_user: str | None = None
        self.bot_id: str | None = None
        self.queued: TTLCache[str, Job] = TTLCache(maxsize=10_000, ttl=3600)  # event_id -> job
        self.streaming: TTLCache[str, Job] = TTLCache(maxsize=10_000, ttl=3600)  # "channel:ts" -> job
        self.posted: TTLCache[str, bool] = TTLCache(maxsize=50_000, ttl=7 * 86400)  # "channel:ts" we posted
        self.thread = ThreadReader(self.api)

    async def start(self) -> None:
        self.ctx.bus.on(f"{self.name}:stop", self._remote_stop)
        self.bot_user, self.bot_id = await self.api.identity()

    async def context(self, msg: Inbound, exchanges: int) -> list[Message] | None:
        """With `thread_context: slack`, a thread's earlier messages from Slack (None outside a
        thread, or when Slack cannot say: the stored transcript then)."""
        if self.config.thread_context != "slack" or not isinstance(msg.reply_to, SlackThread):
            return None
        ts = next((k.rsplit(":", 1)[1] for k in msg.extra_keys if k.startswith("msg:")), None)
        if ts is None or ts == msg.reply_to.thread_ts:  # a top-level message: no thread before it
            return None
        where = msg.reply_to
        return await self.thread.earlier(where.channel, where.thread_ts, ts, 2 * exchanges, self.bot_user, self.bot_id)

    def help_text(self) -> str | None:
        return self.texts["slack_help"]

    # -- inbound -----------------------------------------------------------------------------

    def verify(self, request: WebRequest) -> None:
        if _ssl_check(request, FORM in request.headers.get("content-type", "")):
            return  # Slack's unsigned probe: answered 200 with nothing, no work done
        if self.config.signing_secret is None:
            raise VerificationError("slack: this platform runs in Socket Mode (no signing_secret): no Request URL", 403)
        verify_request(self.config.signing_secret, request.headers, request.body, self.config.replay_window)

    async def receive(self, request: WebRequest) -> WebResponse:
        form = FORM in request.headers.get("content-type", "")
        if _ssl_check(request, form):
            return EMPTY_OK
        if form:
            return await self._interaction(form_fields(request.body))
        data = json_object(request.body)
        if data.get("type") == "url_verification":
            challenge = data.get("challenge")
            if not isinstance(challenge, str):
                raise RequestError("url_verification without a challenge")
            return WebResponse(200, orjson.dumps({"challenge": challenge}), "application/json")
        if data.get("type") == "event_callback":
            await self._event(data, request.headers.get("x-slack-retry-num"))
        return EMPTY_OK

    # -- Socket Mode (proxy/connections.py supervises it) --------------------------------------

    def connects(self) -> bool:
        return self.app_api is not None

    async def connection(self, up: Callable[[], None]) -> None:
        """One Socket Mode connection: `apps.connections.open` gives the WebSocket URL; each
        envelope is handled like the Events API request it stands for and acknowledged once it
        is claimed and submitted (an envelope that was not acknowledged is delivered again, and
        a repeat is dropped by the same persistent dedupe). A `disconnect` message ends it."""
        assert self.app_api is not None
        opened = await self.app_api.call("apps.connections.open", {}, patient=False)
        url = opened.get("url")
        if not isinstance(url, str):
            raise SlackAPIError("apps.connections.open", "answer without url")
        async with self.ctx.http.ws_connect(url, heartbeat=30, autoping=True) as ws:
            async for data in json_objects(ws, f"slack {self.name} (socket mode)"):
                kind = data.get("type")
                if kind == "hello":
                    up()
                elif kind == "disconnect":
                    log.info("slack socket mode: disconnect (%s): reconnecting", data.get("reason"))
                    return
                elif isinstance(data.get("envelope_id"), str):
                    ack = await self._envelope(data)
                    await ws.send_str(orjson.dumps(ack).decode())

    async def _envelope(self, envelope: dict[str, Any]) -> dict[str, Any]:
        """Handle one envelope; its acknowledgement (with a response payload where Slack takes one)."""
        ack: dict[str, Any] = {"envelope_id": envelope["envelope_id"]}
        payload = envelope.get("payload")
        if not isinstance(payload, dict):
            return ack
        kind = envelope.get("type")
        if kind == "events_api" and payload.get("type") == "event_callback":
            retry = envelope.get("retry_attempt")
            await self._event(payload, str(retry) if retry else None)
        elif kind == "interactive":
            await self._interaction({"payload": orjson.dumps(payload).decode()})
        elif kind == "slash_commands":
            ack["payload"] = {"text": "Slash commands are not supported here: mention me or message me directly."}
        return ack

    async def _event(self, data: dict[str, Any], retry: str | None) -> None:
        event_id = data.get("event_id")
        if not isinstance(event_id, str) or not event_id:
            return
        msg = parse_event(self.name, data, self.bot_user)
        if msg is None:
            return
        job = await self.ctx.accept(self, msg)  # event_id, and channel+ts: one message as two events
        if job is None:
            log.debug("slack event %s ignored: seen before (retry %s)", event_id, retry)
            return
        self.queued[msg.event_id] = job

    async def _interaction(self, fields: dict[str, str]) -> WebResponse:
        if "payload" not in fields:
            if "command" in fields:
                return WebResponse(200, b"Slash commands are not supported here: mention me or message me directly.")
            raise RequestError("form body without payload")
        shortcut = parse_shortcut(fields["payload"])
        if shortcut is None:
            return EMPTY_OK
        key = f"{shortcut.channel}:{shortcut.ts}"
        if shortcut.callback_id == self.config.stop_callback:
            await self._stop(key)
        elif shortcut.callback_id == self.config.delete_callback:
            if not self._ours(shortcut):
                log.info("refused to delete %s: not posted by this bot", key)
                return EMPTY_OK
            await self._stop(key)
            self.ctx.spawn(self._delete(shortcut.channel, shortcut.ts), f"delete:{key}")
        return EMPTY_OK

    async def _stop(self, key: str) -> None:
        """Stop the answer streaming into message `key`: here, or on the instance generating it."""
        job = self.streaming.get(key)
        if job is not None:
            job.stop()
        elif self.ctx.bus.active:
            await self.ctx.bus.publish(f"{self.name}:stop", {"key": key})
        else:
            log.info("stop shortcut on %s: no answer is streaming there", key)

    def _remote_stop(self, data: dict[str, Any]) -> None:
        """Another instance received a stop or delete shortcut for a message streaming here."""
        job = self.streaming.get(str(data.get("key")))
        if job is not None:
            log.info("stopping the answer streaming into %s (shortcut received by another instance)", data["key"])
            job.stop()

    def _ours(self, s: Shortcut) -> bool:
        if f"{s.channel}:{s.ts}" in self.posted:
            return True
        return bool((self.bot_user and s.author == self.bot_user) or (self.bot_id and s.author_bot == self.bot_id))

    async def _delete(self, channel: str, ts: str) -> None:
        try:
            await self.api.delete(channel, ts)
        except SlackAPIError as e:
            log.warning("%s", e)

    # -- outbound ----------------------------------------------------------------------------

    def dump_reply_to(self, reply_to: Any) -> Any:
        return {"channel": reply_to.channel, "thread_ts": reply_to.thread_ts}

    def load_reply_to(self, data: Any) -> Any:
        return SlackThread(str(data["channel"]), str(data["thread_ts"]))

    async def deliver(self, msg: Inbound, answer: Answer) -> None:
        where: SlackThread = msg.reply_to
        ts = (msg.recovered or {}).get("placeholder")
        if not isinstance(ts, str):
            ts = await self._post(where, self.config.placeholder)
            await self.ctx.note(msg, placeholder=ts)
        key = f"{where.channel}:{ts}"
        job = self.queued.pop(msg.event_id, None)
        if job is not None:
            self.streaming[key] = job
        try:
            not_before = await stream_edits(
                answer,
                lambda text: self.api.update(where.channel, ts, escape(text), patient=False),
                interval=self.config.update_interval,
                limit=self.config.text_limit,
                errors=(SlackAPIError,),
                retry_after=lambda e: e.retry_after if isinstance(e, SlackRateLimited) else None,
            )
        finally:
            self.streaming.pop(key, None)
        await asyncio.sleep(max(0.0, min(not_before - time.monotonic(), self.config.max_retry_wait)))
        await self._finish(msg, ts, answer)

    async def _post(self, where: SlackThread, text: str) -> str:
        ts = await self.api.post(where.channel, text, where.thread_ts)
        self.posted[f"{where.channel}:{ts}"] = True
        return ts

    async def _finish(self, msg: Inbound, ts: str, answer: Answer) -> None:
        where: SlackThread = msg.reply_to
        parts = self._final_parts(answer)
        try:
            await self.api.update(where.channel, ts, parts[0])
        except SlackAPIError as e:
            if e.error == "message_not_found":
                log.info("answer dropped: its message %s was deleted", ts)
                return
            log.warning("final edit failed (%s); posting the answer as a new reply", e)
            await self._post(where, parts[0])
        posted = int((msg.recovered or {}).get("posted", 1))  # parts an attempt cut off by a crash posted
        for i, part in enumerate(parts[posted:], posted):
            await self._post(where, part)
            if i + 1 < len(parts):
                await self.ctx.note(msg, posted=i + 1)

    def _final_parts(self, answer: Answer) -> list[str]:
        text = "\n".join([answer.text.strip(), *answer.images]).strip()
        parts = [escape(p) for p in split_text(text, self.config.text_limit)]
        if answer.stopped:
            parts = [*parts[:-1], f"{parts[-1]}\n{self.config.stopped_note}"] if parts else [self.config.stopped_note]
        return parts or ["(no answer)"]


def _ssl_check(request: WebRequest, form: bool) -> bool:
    """Slack's certificate probe (`ssl_check=1`): answered 200 with nothing processed."""
    if request.query.get("ssl_check") == "1":
        return True
    if not form or b"ssl_check=" not in request.body:
        return False
    try:
        return form_fields(request.body).get("ssl_check") == "1"
    except RequestError:
        return False
