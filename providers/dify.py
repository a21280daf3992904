"""`dify`: a Dify app through its service API, always in streaming mode (agent apps reject
blocking; streams also carry the conversation id before any failure).

- `app_mode: chat | agent` → `POST /chat-messages`; Dify keeps the history, so only the newest
  user turn is sent as `query`. Its `conversation_id` lives in our store as provider state per
  conversation, saved from the first event that carries it. "Conversation Not Exists" (deleted,
  other user, other app) drops that state and retries once as a new conversation. When there is no
  Dify conversation yet but our transcript has earlier turns (another provider answered before),
  they are folded into the query so the context survives failover into Dify too.
- `app_mode: completion` → `POST /completion-messages` (the text goes to `inputs[query_input]`
  and `query`); `app_mode: workflow` → `POST /workflows/run`, streamed `text_chunk`s, and the answer
  from `outputs[output_key]` when the workflow streamed none.

Event quirks handled: `event: ping` has no data line; agent apps stream `agent_message` and New
Agent apps repeat the whole answer in a final `message`; `message_replace` replaces the answer
(output moderation); failures after the stream opened arrive as an `error` event on HTTP 200.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import aiohttp
import orjson
from pydantic import Field

from providers.openai_base import TRANSPORT_ERRORS, retry_after, transport_error
from proxy.contracts import AdapterConfig, Provider, ProviderState
from proxy.errors import BadResponse, ProviderError, ProviderUnavailable, RequestRejected, error_for_status
from proxy.types import ChatRequest, Delta, Message, Usage

#: Dify codes that mean "the model behind the app failed", not "your request is wrong".
UPSTREAM_CODES = {
    "completion_request_error",
    "provider_not_initialize",
    "model_currently_not_support",
    "app_unavailable",
    "internal_server_error",
}


class DifyConfig(AdapterConfig):
    kind: Literal["dify"] = "dify"
    base_url: str = "https://api.dify.ai/v1"
    api_key: str = Field(min_length=1)
    app_mode: Literal["chat", "agent", "completion", "workflow"] = "chat"
    inputs: dict[str, Any] = {}
    #: workflow apps: which output holds the answer.
    output_key: str = "answer"
    #: completion apps: which input variable receives the user's text.
    query_input: str = "query"
    timeout: float = Field(10.0, gt=0)
    #: Dify pings every ~10 s while it works; wait longer than that between events.
    read_timeout: float = Field(60.0, gt=10)


class ConversationGone(ProviderError):
    """Dify answered 404 "Conversation Not Exists" for our stored conversation id."""


def dify_error(status: int, data: Any, provider: str, headers: Any = None) -> ProviderError:
    data = data if isinstance(data, dict) else {}
    code, message = data.get("code"), str(data.get("message") or f"HTTP {status}")[:300]
    if status == 404 and "conversation" in message.lower():
        return ConversationGone(message, provider=provider, status=404)
    if code in UPSTREAM_CODES:
        return ProviderUnavailable(message, provider=provider, status=status)
    err = error_for_status(
        status, message, provider=provider, code=code, retry_after=retry_after(headers) if headers else None
    )
    return err


def _fold(request: ChatRequest) -> str:
    """The newest user turn, preceded by earlier turns when Dify has no conversation yet."""
    turns = [m for m in request.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user":
        raise RequestRejected("Dify needs a user message last", status=400)
    query = turns[-1].text()
    earlier = turns[:-1]
    if not earlier:
        return query
    lines = [f"{'User' if m.role == 'user' else 'Assistant'}: {m.text()}" for m in earlier]
    return "Conversation so far:\n" + "\n".join(lines) + f"\n\nUser: {query}"


class DifyProvider(Provider):
    config_model = DifyConfig
    stateful = True

    def __init__(self, name: str, config: DifyConfig, http: aiohttp.ClientSession) -> None:
        super().__init__(name, config, http)
        base = config.base_url.rstrip("/")
        self.url = (
            base
            + {
                "chat": "/chat-messages",
                "agent": "/chat-messages",
                "completion": "/completion-messages",
                "workflow": "/workflows/run",
            }[config.app_mode]
        )
        self.headers = {"authorization": f"Bearer {config.api_key}", "content-type": "application/json"}
        self.timeout = aiohttp.ClientTimeout(total=None, connect=config.timeout, sock_read=config.read_timeout)

    @property
    def default_model(self) -> str | None:
        return f"dify-{self.config.app_mode}"

    def describe(self) -> str:
        return f"dify {self.config.base_url} app_mode={self.config.app_mode}"

    async def stream(self, request: ChatRequest, state: ProviderState) -> AsyncIterator[Delta]:
        chatty = self.config.app_mode in ("chat", "agent")
        saved = (await state.get() or {}) if chatty else {}
        conversation = saved.get("conversation_id")
        try:
            async for d in self._run(request, state, conversation):
                yield d
        except ConversationGone:
            if not conversation:
                raise
            await state.set(None)
            async for d in self._run(request, state, None):
                yield d

    def _body(self, request: ChatRequest, conversation: str | None) -> bytes:
        mode = self.config.app_mode
        if mode in ("chat", "agent"):
            query = _fold(request) if not conversation else _last_user(request.messages)
            body: dict[str, Any] = {
                "query": query,
                "inputs": self.config.inputs,
                "response_mode": "streaming",
                "user": request.user,
            }
            if conversation:
                body["conversation_id"] = conversation
        elif mode == "completion":
            text = _fold(request)
            body = {
                "inputs": {**self.config.inputs, self.config.query_input: text},
                "query": text,
                "response_mode": "streaming",
                "user": request.user,
            }
        else:
            body = {
                "inputs": {**self.config.inputs, self.config.query_input: _fold(request)},
                "response_mode": "streaming",
                "user": request.user,
            }
        return orjson.dumps(body)

    async def _run(self, request: ChatRequest, state: ProviderState, conversation: str | None) -> AsyncIterator[Delta]:
        try:
            async with self.http.post(
                self.url, data=self._body(request, conversation), headers=self.headers, timeout=self.timeout
            ) as resp:
                if resp.status >= 400:
                    raw = await resp.read()
                    try:
                        data = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        data = {"message": f"non-JSON error body ({len(raw)} bytes)"}
                    raise dify_error(resp.status, data, self.name, resp.headers)
                async for d in self._events(resp, state, conversation):
                    yield d
        except TRANSPORT_ERRORS as e:
            raise transport_error(e, self.name) from None

    async def _events(
        self, resp: aiohttp.ClientResponse, state: ProviderState, known: str | None
    ) -> AsyncIterator[Delta]:
        saved, agent_text, streamed = known, False, False
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue  # `event: ping`, blank separators
            try:
                ev = orjson.loads(line[5:].strip())
            except orjson.JSONDecodeError:
                raise BadResponse("unparseable Dify event", provider=self.name) from None
            kind = ev.get("event")
            cid = ev.get("conversation_id")
            if cid and cid != saved and self.config.app_mode in ("chat", "agent"):
                saved = cid
                await state.set({"conversation_id": cid})
            if kind == "agent_message":
                agent_text = True
                if ev.get("answer"):
                    streamed = True
                    yield Delta(text=ev["answer"])
            elif kind == "message" and not agent_text:
                if ev.get("answer"):
                    streamed = True
                    yield Delta(text=ev["answer"])
            elif kind == "message_replace":
                yield Delta(text=ev.get("answer") or "", replace=True)
            elif kind == "text_chunk":
                text = (ev.get("data") or {}).get("text")
                if text:
                    streamed = True
                    yield Delta(text=text)
            elif kind == "message_end":
                yield Delta(finish_reason="stop", usage=_usage(ev))
            elif kind == "workflow_finished":
                data = ev.get("data") or {}
                if data.get("status") not in (None, "succeeded", "partial-succeeded"):
                    raise ProviderUnavailable(
                        f"workflow {data.get('status')}: {str(data.get('error'))[:200]}", provider=self.name
                    )
                if self.config.app_mode == "workflow":
                    if not streamed:
                        out = (data.get("outputs") or {}).get(self.config.output_key)
                        yield Delta(text=out if isinstance(out, str) else orjson.dumps(out).decode())
                    yield Delta(finish_reason="stop")
            elif kind == "error":
                raise dify_error(int(ev.get("status") or 500), ev, self.name)


def _last_user(messages: tuple[Message, ...]) -> str:
    for m in reversed(messages):
        if m.role == "user":
            return m.text()
    raise RequestRejected("Dify needs a user message", status=400)


def _usage(ev: dict[str, Any]) -> Usage | None:
    u = (ev.get("metadata") or {}).get("usage")
    if not isinstance(u, dict):
        return None
    return Usage(
        int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0), int(u.get("total_tokens") or 0)
    )
