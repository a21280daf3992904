"""`openai`: OpenAI and every OpenAI-compatible chat API (api2d and similar resellers, vLLM,
LM Studio, Ollama's /v1...). Streaming and not, one key or a key pool (`api_keys: [...]`).

api2d: a plain `openai` provider with `base_url: https://oa.api2d.net/v1` and its forward key
(`fk...`). api2d may answer identical requests from its response cache; add
`headers: {x-api2d-no-cache: "1"}` to bypass it. The header is sent only when configured.

Compatible servers that reject `stream_options` take `stream_usage: false`; servers that only know
`max_tokens` (or reasoning models that only take `max_completion_tokens`) take `max_tokens_field`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import aiohttp
import orjson

from providers.openai_base import OpenAICompatConfig, OpenAICompatProvider, sse_deltas, usage_of
from providers.upstream import TRANSPORT_ERRORS, no_model, transport_error
from proxy.contracts import ProviderState
from proxy.errors import BadResponse
from proxy.types import ChatRequest, Completion, Delta, Embeddings, EmbedRequest, TranscribeRequest

_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")


class OpenAIConfig(OpenAICompatConfig):
    kind: Literal["openai"] = "openai"
    """`openai`: any OpenAI-compatible chat-completions API."""


class OpenAIProvider(OpenAICompatProvider):
    config_model = OpenAIConfig
    path = "/chat/completions"  # Accept: application/json for streams too, as the SDK does

    def __init__(self, name: str, config: OpenAIConfig, http: aiohttp.ClientSession) -> None:
        super().__init__(name, config, http)
        self._embed_url = config.base_url.rstrip("/") + "/embeddings"
        self._moderate_url = config.base_url.rstrip("/") + "/moderations"
        self._transcribe_url = config.base_url.rstrip("/") + "/audio/transcriptions"
        # the configured extra headers; content-type is the multipart boundary aiohttp sets
        self._headers_for_upload = {"accept": "application/json", **config.headers}
        self._stream_extra: dict[str, Any] = {"stream": True}
        if config.stream_usage:
            self._stream_extra["stream_options"] = {"include_usage": True}

    def _payload(self, request: ChatRequest, stream: bool) -> bytes:
        body: dict[str, Any] = {**self.config.params, **request.params}
        body["model"] = request.model or self.config.model
        body["messages"] = [m.to_openai() for m in request.messages]
        field = self.config.max_tokens_field
        if field is not None:
            for name in _TOKEN_FIELDS:
                if name != field and name in body:
                    body[field] = body.pop(name)
        if stream:
            body.update(self._stream_extra)
        return orjson.dumps(body)

    async def complete(self, request: ChatRequest, state: ProviderState) -> Completion:
        async with self.pool.lease(request.conversation, TRANSPORT_ERRORS, transport_error) as key:
            async with self.http.post(
                self.url, data=self._payload(request, False), headers=self._headers[key.value], timeout=self._timeout
            ) as resp:
                await self.raise_for_status(resp)
                raw = await resp.read()
        return self._completion(raw)

    embeds = True

    async def embed(self, request: EmbedRequest) -> Embeddings:
        model = request.model or self.config.embedding_model
        if not model:
            raise no_model(self.name, "embedding", "embedding_model")
        body: dict[str, Any] = {"model": model, "input": list(request.inputs), "encoding_format": "float"}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        if request.user:
            body["user"] = request.user
        async with self.pool.lease("", TRANSPORT_ERRORS, transport_error) as key:
            async with self.http.post(
                self._embed_url, data=orjson.dumps(body), headers=self._headers[key.value], timeout=self._timeout
            ) as resp:
                await self.raise_for_status(resp)
                raw = await resp.read()
        try:
            data = orjson.loads(raw)
            items = sorted(data["data"], key=lambda d: d.get("index", 0))
            vectors = tuple(tuple(float(x) for x in item["embedding"]) for item in items)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise BadResponse("the answer is not a list of embeddings", provider=self.name) from None
        if len(vectors) != len(request.inputs):
            raise BadResponse(f"{len(vectors)} embeddings for {len(request.inputs)} inputs", provider=self.name)
        return Embeddings(vectors, data.get("model") or model, usage_of(data.get("usage")))

    moderates = True

    async def moderate(self, text: str) -> bool:
        body: dict[str, Any] = {"input": text}
        if self.config.moderation_model:
            body["model"] = self.config.moderation_model
        async with self.pool.lease("", TRANSPORT_ERRORS, transport_error) as key:
            async with self.http.post(
                self._moderate_url, data=orjson.dumps(body), headers=self._headers[key.value], timeout=self._timeout
            ) as resp:
                await self.raise_for_status(resp)
                raw = await resp.read()
        try:
            results = orjson.loads(raw)["results"]
            return any(bool(r["flagged"]) for r in results)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise BadResponse("the answer is not a moderation result", provider=self.name) from None

    transcribes = True

    async def transcribe(self, request: TranscribeRequest) -> tuple[str, bytes]:
        model = request.model or self.config.transcription_model
        if not model:
            raise no_model(self.name, "transcription", "transcription_model")
        form = aiohttp.FormData()
        form.add_field("file", request.audio, filename=request.filename, content_type=request.content_type)
        form.add_field("model", model)
        for name, value in request.fields.items():
            form.add_field(name, value)
        async with self.pool.lease("", TRANSPORT_ERRORS, transport_error) as key:
            auth = {"authorization": f"Bearer {key.value}"} if key.value else {}
            async with self.http.post(
                self._transcribe_url, data=form, headers={**self._headers_for_upload, **auth}, timeout=self._timeout
            ) as resp:
                await self.raise_for_status(resp)
                raw = await resp.read()
                kind = resp.headers.get("content-type", "application/json")
        return kind, raw

    def _completion(self, raw: bytes) -> Completion:
        try:
            data = orjson.loads(raw)
            choice = data["choices"][0]
            message = choice.get("message") or {}
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise BadResponse("the answer is not a chat completion", provider=self.name) from None
        return Completion(
            text=message.get("content") or message.get("refusal") or "",
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
                await self.raise_for_status(resp)
                async for delta in sse_deltas(resp, self.name, self._secrets):
                    yield delta
