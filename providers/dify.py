"""`dify`: a Dify app through its service API, always in streaming mode (agent apps reject
blocking; streams also carry the conversation id before any failure).

- `app_mode: chat | agent` → `POST /chat-messages`; Dify keeps the history, so only the newest
  user turn is sent as `query`. Its `conversation_id` lives in our store as provider state per
  conversation, saved from the first event that carries it, together with the Dify `user` it
  belongs to: Dify only finds a conversation for the user who created it, so a shared session
  (a group chat) keeps talking as that user. "Conversation Not Exists" (deleted, other app) drops
  the state and retries once as a new conversation. When there is no Dify conversation yet but
  our transcript has earlier turns (another provider answered before), the last `fold_turns` are
  folded into the query so the context survives failover into Dify too.
- `app_mode: completion` → `POST /completion-messages` (the text goes to `inputs[query_input]`
  and `query`); `app_mode: workflow` → `POST /workflows/run`, streamed `text_chunk`s, and the answer
  from `outputs[output_key]` when the workflow streamed none.

Event quirks handled: `event: ping` has no data line; agent apps stream `agent_message` and New
Agent apps repeat the whole answer in a final `message`; `message_replace` replaces the answer
(output moderation); failures after the stream opened arrive as an `error` event on HTTP 200;
`message_file` images become `Delta.images`. Closing our side does not stop Dify generating (and
billing): a stream left before its end is stopped with the stop endpoint, in the background.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, Literal
from urllib.parse import quote, urljoin

import aiohttp
import orjson
from pydantic import Field

from providers.keypool import mask
from providers.upstream import (
    DONE,
    TRANSPORT_ERRORS,
    UNPARSEABLE,
    JSONEvents,
    non_json_error,
    probe_get,
    retry_after,
    scrub,
    transport_error,
)
from proxy.contracts import AdapterConfig, Provider, ProviderState
from proxy.errors import (
    BadResponse,
    Misconfigured,
    ProviderError,
    ProviderUnavailable,
    QuotaExceeded,
    RequestRejected,
    error_for_status,
)
from proxy.probe import ProbeOutcome, ProbeResult
from proxy.types import JSON, ChatRequest, Delta, Message, Usage

log = logging.getLogger("switchboard.providers.dify")

#: Dify codes that mean "the model or app behind Dify failed", not "your request is wrong".
UPSTREAM_CODES = {
    "completion_request_error",
    "provider_not_initialize",
    "model_currently_not_support",
    "app_unavailable",
    "internal_server_error",
}
#: Dify codes for an exhausted quota: its hosted-model credits, or its Cloud plan's limit
#: (`rate_limit_error` on a 429 — unlike `too_many_requests`, not worth retrying soon).
QUOTA_CODES = {"provider_quota_exceeded", "rate_limit_error"}
#: Dify codes that say our provider config does not fit the app (wrong app_mode, unpublished).
CONFIG_CODES = {"not_chat_app", "not_workflow_app", "agent_not_published", "bad_request"}
PATHS = {"chat": "/chat-messages", "agent": "/chat-messages", "completion": "/completion-messages"}
STOP_PATHS = {
    "chat": "/chat-messages/{}/stop",
    "agent": "/chat-messages/{}/stop",
    "completion": "/completion-messages/{}/stop",
    "workflow": "/workflows/tasks/{}/stop",
}
STOP_TIMEOUT = aiohttp.ClientTimeout(total=5)
#: The Dify app modes (`GET /info` → `mode`) each `app_mode` can talk to.
CHAT_MODES = frozenset({"chat", "advanced-chat", "agent-chat", "agent"})
APP_MODES = {"chat": CHAT_MODES, "agent": CHAT_MODES, "completion": {"completion"}, "workflow": {"workflow"}}


class DifyConfig(AdapterConfig):
    kind: Literal["dify"] = "dify"
    """`dify`: a Dify app over its service API."""
    base_url: str = "https://api.dify.ai/v1"
    """The Dify API root (self-hosted: `https://host/v1`)."""
    api_key: str = Field(min_length=1)
    """The app's API key (`app-…`)."""
    app_mode: Literal["chat", "agent", "completion", "workflow"] = "chat"
    """The Dify app's type, which decides the endpoint: `chat` and `agent` use chat-messages, `completion` completion-
    messages, `workflow` workflows/run."""
    inputs: dict[str, Any] = {}
    """Values for the app's input variables, sent with every request."""
    output_key: str = "answer"
    """workflow apps: which output holds the answer."""
    query_input: str = "query"
    """completion and workflow apps: which input variable receives the user's text."""
    fold_turns: int = Field(10, ge=0)
    """earlier turns folded into the query of a new conversation (context after failover)."""
    stop_on_disconnect: bool = True
    """stop Dify's generation when we leave a stream early (caller gone, stopped, timed out)."""
    timeout: float = Field(10.0, gt=0)
    """Seconds to connect to Dify."""
    read_timeout: float = Field(60.0, gt=10)
    """Dify pings every ~10 s while it works; wait longer than that between events."""


class ConversationGone(Misconfigured):
    """Dify no longer takes our stored conversation id (404 "Conversation Not Exists", or
    `conversation_completed`): the provider starts a new one. Not the caller's error."""


def dify_error(status: int, data: Any, provider: str, headers: Any = None, secret: str = "") -> ProviderError:
    """A Dify error body or `error` event (`{code, message, status}`) → the error tree.

    Dify answers 400 for its model's failures too, so its code decides before the status does;
    a plain 400 (`invalid_param`) or 413 is the caller's."""
    data = data if isinstance(data, dict) else {}
    code = data.get("code") if isinstance(data.get("code"), str) else None
    message = scrub(str(data.get("message") or f"HTTP {status}")[:300], (secret,))
    if (status == 404 and "conversation" in message.lower()) or code == "conversation_completed":
        return ConversationGone(message, provider=provider, status=status, code=code)
    if code in QUOTA_CODES:
        return QuotaExceeded(message, provider=provider, status=status, code=code)
    if code in UPSTREAM_CODES:
        return ProviderUnavailable(message, provider=provider, status=status, code=code)
    if code in CONFIG_CODES:
        return Misconfigured(message, provider=provider, status=status, code=code)
    wait = retry_after(headers) if headers is not None else None
    return error_for_status(status, message, provider=provider, code=code, retry_after=wait)


class _Run:
    """What one Dify stream has shown so far."""

    __slots__ = ("agent_text", "conversation", "finished", "streamed", "task_id")

    def __init__(self, conversation: str | None) -> None:
        self.conversation = conversation
        self.task_id: str | None = None
        self.agent_text = self.streamed = self.finished = False


class DifyProvider(Provider):
    config_model = DifyConfig
    uses_tools = False  # a Dify app's tools are its own: the Service API takes none from the caller
    sees_images = False  # only the text of a turn is sent (Dify's files need uploads or app settings)

    def __init__(self, name: str, config: DifyConfig, http: aiohttp.ClientSession) -> None:
        super().__init__(name, config, http)
        self.base = config.base_url.rstrip("/")
        self.url = self.base + PATHS.get(config.app_mode, "/workflows/run")
        self.chatty = config.app_mode in ("chat", "agent")
        self.headers = {"authorization": f"Bearer {config.api_key}", "content-type": "application/json"}
        self.timeout = aiohttp.ClientTimeout(total=None, connect=config.timeout, sock_read=config.read_timeout)
        self._stopping: set[asyncio.Task[None]] = set()

    @property
    def default_model(self) -> str | None:
        return f"dify-{self.config.app_mode}"

    def describe(self) -> str:
        return f"dify {self.config.base_url} app_mode={self.config.app_mode}"

    async def close(self) -> None:
        if self._stopping:
            await asyncio.wait(self._stopping, timeout=STOP_TIMEOUT.total)

    async def stream(self, request: ChatRequest, state: ProviderState) -> AsyncIterator[Delta]:
        saved = (await state.get() or {}) if self.chatty else {}
        conversation = saved.get("conversation_id")
        user = (saved.get("user") if conversation else None) or request.user
        yielded = False
        try:
            async with aclosing(self._run(request, state, conversation, user)) as events:
                async for d in events:
                    yielded = True
                    yield d
            return
        except ConversationGone:
            if not conversation or yielded:
                raise
        await state.set(None)  # Dify forgot it: start over, with our transcript folded in
        async with aclosing(self._run(request, state, None, request.user)) as events:
            async for d in events:
                yield d

    def _body(self, request: ChatRequest, conversation: str | None, user: str) -> bytes:
        c = self.config
        body: JSON = {"response_mode": "streaming", "user": user}
        if self.chatty:
            body.update(query=_last_user(request.messages) if conversation else self._fold(request), inputs=c.inputs)
            if conversation:
                body["conversation_id"] = conversation
        else:
            text = self._fold(request)
            body["inputs"] = {**c.inputs, c.query_input: text}
            if c.app_mode == "completion":
                body["query"] = text
        return orjson.dumps(body)

    def _fold(self, request: ChatRequest) -> str:
        """The newest user turn, preceded by earlier turns when Dify has no conversation yet."""
        turns = [m for m in request.messages if m.role in ("user", "assistant")]
        if not turns or turns[-1].role != "user":
            raise RequestRejected("Dify needs a user message last", provider=self.name, status=400)
        query = turns[-1].text()
        earlier = turns[:-1][-self.config.fold_turns :] if self.config.fold_turns else []
        if not earlier:
            return query
        lines = [f"{'User' if m.role == 'user' else 'Assistant'}: {m.text()}" for m in earlier]
        return "Conversation so far:\n" + "\n".join(lines) + f"\n\nUser: {query}"

    async def _run(
        self, request: ChatRequest, state: ProviderState, conversation: str | None, user: str
    ) -> AsyncGenerator[Delta, None]:
        run = _Run(conversation)
        try:
            async with self.http.post(
                self.url, data=self._body(request, conversation, user), headers=self.headers, timeout=self.timeout
            ) as resp:
                if resp.status >= 400:
                    raise await self._http_error(resp)
                async for d in self._events(resp, state, run, user):
                    yield d
        except TRANSPORT_ERRORS as e:
            raise transport_error(e, self.name) from None
        finally:
            if run.task_id and not run.finished and self.config.stop_on_disconnect:
                self._stop_later(run.task_id, user)

    async def probe(self) -> list[ProbeResult]:
        """`GET /info` with the app key (Dify's health-check call, which also names the app's
        mode: it must fit `app_mode`); `GET /parameters` on servers too old to have /info."""
        shown, headers = mask(self.config.api_key), {"authorization": self.headers["authorization"]}
        try:
            try:
                info = await probe_get(self.http, self.base + "/info", headers, self.name, self._error_of)
            except Misconfigured as e:
                if e.status != 404:
                    raise
                await probe_get(self.http, self.base + "/parameters", headers, self.name, self._error_of)
                return [ProbeResult(shown, ProbeOutcome.REACHABLE, "app answers; no /info, so its mode is unchecked")]
        except ProviderError as e:
            return [ProbeResult.of_error(shown, e)]
        info = info if isinstance(info, dict) else {}
        app = f"app {str(info['name'])[:60]!r}" if info.get("name") else "app"
        mode, want = info.get("mode"), self.config.app_mode
        if not isinstance(mode, str):
            return [ProbeResult(shown, ProbeOutcome.REACHABLE, app)]
        if mode not in APP_MODES[want]:
            return [
                ProbeResult(shown, ProbeOutcome.MISCONFIGURED, f"{app} is a {mode} app; app_mode {want} does not fit")
            ]
        return [ProbeResult(shown, ProbeOutcome.REACHABLE, f"{app}, mode {mode}")]

    async def _http_error(self, resp: aiohttp.ClientResponse) -> ProviderError:
        return self._error_of(resp.status, resp.headers, await resp.read())

    def _error_of(self, status: int, headers: Any, raw: bytes) -> ProviderError:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):  # an edge proxy's HTML page
            return non_json_error(status, headers, raw, self.name)
        return dify_error(status, data, self.name, headers, self.config.api_key)

    async def _events(
        self, resp: aiohttp.ClientResponse, state: ProviderState, run: _Run, user: str
    ) -> AsyncIterator[Delta]:
        events = JSONEvents()
        reads = resp.content.iter_any()
        while True:
            try:
                values = events.feed(await anext(reads))
                last = False
            except StopAsyncIteration:
                values, last = events.close(), True
            for ev in values:
                if ev is UNPARSEABLE or ev is DONE:
                    raise BadResponse("unparseable Dify event", provider=self.name)
                if not isinstance(ev, dict):
                    raise BadResponse("Dify event is not a JSON object", provider=self.name)
                task = ev.get("task_id")
                run.task_id = run.task_id or (task if isinstance(task, str) else None)
                cid = ev.get("conversation_id")
                if cid and isinstance(cid, str) and cid != run.conversation and self.chatty:
                    run.conversation = cid
                    await state.set({"conversation_id": cid, "user": user})
                for d in self._event(ev, run):
                    yield d
            if last:
                return

    def _event(self, ev: JSON, run: _Run) -> list[Delta]:
        kind = ev.get("event")
        if kind == "agent_message" or (kind == "message" and not run.agent_text):
            run.agent_text = run.agent_text or (kind == "agent_message" and bool(ev.get("answer")))
            run.streamed = run.streamed or bool(ev.get("answer"))
            answer = ev.get("answer")
            if answer and not isinstance(answer, str):
                raise BadResponse(f"Dify {kind} event without a text answer", provider=self.name)
            return [Delta(text=answer)] if answer else []
        if kind == "text_chunk":
            text = (ev.get("data") or {}).get("text")
            run.streamed = run.streamed or bool(text)
            return [Delta(text=text)] if text else []
        if kind == "message_replace":
            return [Delta(text=ev.get("answer") or "", replace=True)]
        if kind == "message_file" and ev.get("type") == "image" and ev.get("url") and ev.get("belongs_to") != "user":
            return [Delta(images=(urljoin(self.base + "/", str(ev["url"])),))]
        if kind == "message_end":
            run.finished = True
            return [Delta(finish_reason="stop", usage=_usage(ev))]
        if kind == "workflow_finished":
            run.finished = True
            return self._workflow_finished(ev.get("data") or {}, run)
        if kind == "error":
            run.finished = True
            status = ev.get("status")
            status = status if isinstance(status, int) and 400 <= status < 600 else 500
            raise dify_error(status, ev, self.name, None, self.config.api_key)
        return []  # ping, agent_thought, node events, tts...

    def _workflow_finished(self, data: JSON, run: _Run) -> list[Delta]:
        if data.get("status") not in (None, "succeeded", "partial-succeeded"):
            error = scrub(str(data.get("error"))[:200], (self.config.api_key,))
            raise ProviderUnavailable(f"workflow {data.get('status')}: {error}", provider=self.name)
        if self.config.app_mode != "workflow":
            return []  # chatflow: the answer came as `message` events
        if run.streamed:
            return [Delta(finish_reason="stop")]
        outputs = data.get("outputs") or {}
        out = outputs.get(self.config.output_key)
        if out is None:
            keys = ", ".join(map(str, outputs)) or "none"
            raise BadResponse(f"workflow output {self.config.output_key!r} missing (has: {keys})", provider=self.name)
        return [Delta(text=out if isinstance(out, str) else orjson.dumps(out).decode(), finish_reason="stop")]

    def _stop_later(self, task_id: str, user: str) -> None:
        try:
            task = asyncio.get_running_loop().create_task(self._stop(task_id, user))
        except RuntimeError:  # no loop any more (interpreter shutdown)
            return
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _stop(self, task_id: str, user: str) -> None:
        url = self.base + STOP_PATHS[self.config.app_mode].format(quote(task_id, safe=""))
        try:
            body = orjson.dumps({"user": user})
            async with self.http.post(url, data=body, headers=self.headers, timeout=STOP_TIMEOUT) as resp:
                await resp.read()
        except Exception as e:  # best effort; the answer is already over for us
            log.info("%s: stopping Dify task failed: %s", self.name, type(e).__name__)


def _last_user(messages: tuple[Message, ...]) -> str:
    for m in reversed(messages):
        if m.role == "user":
            return m.text()
    raise RequestRejected("Dify needs a user message", status=400)  # the caller sent none


def _usage(ev: JSON) -> Usage | None:
    u = (ev.get("metadata") or {}).get("usage")
    if not isinstance(u, dict):
        return None
    return Usage(
        int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0), int(u.get("total_tokens") or 0)
    )
