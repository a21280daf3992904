"""`openai`: OpenAI and every OpenAI-compatible chat API (api2d and similar resellers, vLLM,
LM Studio, Ollama's /v1...). Streaming and not, with a key pool.

api2d: `base_url: https://oa.api2d.net/v1` with its forward key; add
`headers: {x-api2d-no-cache: "1"}` to bypass api2d's response cache.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import aiohttp
import orjson

from providers.keypool import KeyPool
from providers.openai_base import (
    TRANSPORT_ERRORS,
    OpenAICompatConfig,
    raise_for_status,
    sse_deltas,
    transport_error,
    usage_of,
)
from proxy.contracts import Provider, ProviderState
from proxy.errors import BadResponse
from proxy.types import ChatRequest, Completion, Delta


class OpenAIConfig(OpenAICompatConfig):
    kind: Literal["openai"] = "openai"


class OpenAIProvider(Provider):
    config_model = OpenAIConfig

    def __init__(self, name: str, config: OpenAIConfig, http: aiohttp.ClientSession) -> None:
        super().__init__(name, config, http)
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.pool = KeyPool(config.keys(), name)
        base = {"content-type": "application/json", "accept": "application/json", **config.headers}
        self._headers = {
            k.value: {**base, "authorization": f"Bearer {k.value}"} if k.value else base for k in self.pool.keys
        }
        self._timeout = aiohttp.ClientTimeout(total=None, connect=config.timeout, sock_read=config.read_timeout)

    def describe(self) -> str:
        n = len(self.pool.keys)
        return f"openai {self.config.base_url} model={self.config.model} keys={n}"

    def key_status(self) -> list[dict[str, object]]:
        return self.pool.status()

    def _payload(self, request: ChatRequest, stream: bool) -> bytes:
        body: dict[str, Any] = {**self.config.params, **request.params}
        body["model"] = request.model or self.config.model
        body["messages"] = [m.to_openai() for m in request.messages]
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return orjson.dumps(body)

    async def complete(self, request: ChatRequest, state: ProviderState) -> Completion:
        async with self.pool.lease(request.conversation, TRANSPORT_ERRORS, transport_error) as key:
            async with self.http.post(
                self.url, data=self._payload(request, False), headers=self._headers[key.value], timeout=self._timeout
            ) as resp:
                await raise_for_status(resp, self.name)
                raw = await resp.read()
        return self._completion(raw)

    def _completion(self, raw: bytes) -> Completion:
        try:
            data = orjson.loads(raw)
            choice = data["choices"][0]
            message = choice.get("message") or {}
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise BadResponse("the answer is not a chat completion", provider=self.name) from None
        return Completion(
            text=message.get("content") or "",
            finish_reason=choice.get("finish_reason") or "stop",
            usage=usage_of(data.get("usage")),
            tool_calls=message.get("tool_calls"),
            model=data.get("model"),
        )

    async def stream(self, request: ChatRequest, state: ProviderState) -> AsyncIterator[Delta]:
        async with self.pool.lease(request.conversation, TRANSPORT_ERRORS, transport_error) as key:
            async with self.http.post(
                self.url, data=self._payload(request, True), headers=self._headers[key.value], timeout=self._timeout
            ) as resp:
                await raise_for_status(resp, self.name)
                async for delta in sse_deltas(resp, self.name):
                    yield delta
