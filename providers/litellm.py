"""`litellm`: local and other models through the LiteLLM SDK (e.g. `ollama_chat/qwen2.5` with
`api_base: http://127.0.0.1:11434`, or `hosted_vllm/<model>` with an `api_base` ending in /v1).

LiteLLM costs seconds and ~180 MB to import, so it is imported only in `start()` — only when such
a provider is configured and enabled — in a worker thread, with its remote cost-map fetch off.
LiteLLM's own retries are off: retries and failover are the core's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, Literal

from pydantic import Field

from providers.keypool import mask
from providers.openai_base import error_from_body, model_listed
from providers.upstream import no_model, probe_get, retry_after, scrub
from proxy.contracts import AdapterConfig, Provider, ProviderState
from proxy.errors import (
    AuthFailed,
    BadResponse,
    ContextTooLong,
    Misconfigured,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    RequestRejected,
)
from proxy.probe import ProbeOutcome, ProbeResult
from proxy.types import JSON, ChatRequest, Completion, Delta, Embeddings, EmbedRequest, Usage


class LiteLLMConfig(AdapterConfig):
    kind: Literal["litellm"] = "litellm"
    """`litellm`: any backend the litellm library speaks to, in process (extra `litellm`)."""
    model: str = Field(min_length=1)
    """litellm model string with its provider prefix, e.g. `anthropic/claude-3-5-sonnet-latest`."""
    api_base: str | None = None
    """Overrides the backend's API root."""
    api_key: str | None = None
    """Key for the backend; unset: litellm reads its usual environment variables."""
    drop_params: bool = True
    """Drop OpenAI parameters the backend does not support instead of failing."""
    timeout: float = Field(120.0, gt=0)
    """Seconds a whole request may take."""
    params: dict[str, Any] = {}
    """Default generation parameters; the caller's and the channel's override them."""
    embedding_model: str | None = None
    """litellm model string for `POST /v1/embeddings` when the channel names none, e.g.
    `ollama/nomic-embed-text`."""


def _import_litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    import litellm

    litellm.suppress_debug_info = True
    return litellm


def map_error(lib: Any, err: BaseException, provider: str, secret: str | None = None) -> ProviderError:
    """LiteLLM's exception classes → our tree (see backends.md §4.3 for the surprises).

    BadRequest/UnprocessableEntity (incl. ContextWindowExceeded) are the caller's; NotFound, and
    Ollama's "model not found" that LiteLLM reports as a connection error, are our config's."""
    message = str(getattr(err, "message", None) or err)[:300]
    message = scrub(message, (secret,)) if secret else message
    status = getattr(err, "status_code", None)
    status = status if isinstance(status, int) else None
    if isinstance(err, lib.Timeout):  # not an APIConnectionError subclass in LiteLLM: check first
        return ProviderTimeout(message, provider=provider, status=status)
    if isinstance(err, lib.RateLimitError):
        if "insufficient_quota" in message or "exceeded your current quota" in message:
            return QuotaExceeded(message, provider=provider, status=429)
        headers = getattr(getattr(err, "response", None), "headers", None)
        wait = retry_after(headers) if headers is not None else None
        return RateLimited(message, provider=provider, status=429, retry_after=wait)
    if isinstance(err, (lib.AuthenticationError, lib.PermissionDeniedError)):
        return AuthFailed(message, provider=provider, status=status)
    if isinstance(err, lib.ContextWindowExceededError):
        return ContextTooLong(message, provider=provider, status=400, code="context_length_exceeded")
    if isinstance(err, lib.BadRequestError) and "unexpected response" in message:
        # Ollama's own `{"error": ...}` line (out of memory, model crashed): the backend failed
        return ProviderUnavailable(message, provider=provider, status=status)
    if isinstance(err, (lib.BadRequestError, lib.UnprocessableEntityError)):
        return RequestRejected(message, provider=provider, status=status if status in (400, 413, 422) else 400)
    if isinstance(err, lib.NotFoundError) or _OLLAMA_NO_MODEL in message:
        return Misconfigured(message, provider=provider, status=404)
    if isinstance(err, (lib.APIConnectionError, lib.ServiceUnavailableError, lib.InternalServerError, lib.APIError)):
        return ProviderUnavailable(message, provider=provider, status=status)
    return BadResponse(f"{type(err).__name__}: {message}", provider=provider)


#: Ollama's answer for a model it has not pulled (LiteLLM passes it on as a connection error).
_OLLAMA_NO_MODEL = "not found, try pulling it first"
#: LiteLLM model prefixes that talk to Ollama's own API.
_OLLAMA_PREFIXES = ("ollama", "ollama_chat")


def _pulled(key: str, tags: Any, model: str) -> ProbeResult:
    """Is `model` among Ollama's local models (`GET /api/tags`)? A name without a tag means
    `:latest`, as in Ollama. Not pulled is misconfigured: every request would be a 404."""
    models = tags.get("models") if isinstance(tags, dict) else None
    names = (
        {n for m in models if isinstance(m, dict) for n in (m.get("name"), m.get("model")) if isinstance(n, str)}
        if isinstance(models, list)
        else set()
    )
    if names & ({model} if ":" in model else {model, f"{model}:latest"}):
        return ProbeResult(key, ProbeOutcome.REACHABLE, f"model {model} pulled")
    has = ", ".join(sorted(names)[:5]) or "none"
    return ProbeResult(key, ProbeOutcome.MISCONFIGURED, f"model {model} not pulled (ollama pull {model}); has: {has}")


class LiteLLMProvider(Provider):
    config_model = LiteLLMConfig
    requires = {"litellm": "litellm"}

    async def start(self) -> None:
        self.lib = await asyncio.to_thread(_import_litellm)
        await asyncio.to_thread(self._warm_model_info)

    def _warm_model_info(self) -> None:
        """LiteLLM's success logging looks up model info with a *synchronous* HTTP call (Ollama's
        /api/show) on the event loop thread; its results are cached per (model, provider,
        api_base). Fill that cache here, in a worker thread, with the keys it asks for."""
        model = self.config.model
        prefix, _, bare = model.partition("/")
        keys: list[tuple[str, str | None, str | None]]
        if not bare:
            keys = [(model, None, None)]
        else:  # which of these it asks for depends on the call's path (a failed call before, or not)
            bases: list[str | None] = [None]
            if self.config.api_base:
                bases += [self.config.api_base, self.config.api_base.rstrip("/") + "/api/chat"]
            keys = [(m, prefix, b) for m in (model, bare) for b in bases]
        for m, provider, base in keys:
            try:
                self.lib.get_model_info(model=m, custom_llm_provider=provider, api_base=base)
            except Exception:
                pass  # unknown models are fine: the lookup result (or its failure) is what we warm

    def describe(self) -> str:
        return f"litellm {self.config.model} at {self.config.api_base or 'default'}"

    async def probe(self) -> list[ProbeResult]:
        """Only what the config points at, never a vendor's default endpoint: `ollama/` and
        `ollama_chat/` models → `GET {api_base}/api/tags` (is the model pulled?); other models →
        `GET {api_base}/models` (OpenAI-compatible servers: vLLM, LM Studio...); no `api_base`,
        no probe. Needs nothing from LiteLLM itself."""
        c = self.config
        shown = mask(c.api_key) if c.api_key else "-"
        if not c.api_base:
            return [ProbeResult(shown, ProbeOutcome.NOT_PROBED, "no api_base: LiteLLM picks the endpoint itself")]
        prefix, _, bare = c.model.partition("/")
        ollama = prefix in _OLLAMA_PREFIXES and bool(bare)
        url = c.api_base.rstrip("/") + ("/api/tags" if ollama else "/models")
        headers = {"authorization": f"Bearer {c.api_key}"} if c.api_key else {}
        error_of = partial(error_from_body, provider=self.name, secrets=(c.api_key,) if c.api_key else ())
        try:
            data = await probe_get(self.http, url, headers, self.name, error_of)
        except ProviderError as e:
            return [ProbeResult.of_error(shown, e)]
        if ollama:
            return [_pulled(shown, data, bare)]
        return [ProbeResult(shown, ProbeOutcome.REACHABLE, model_listed(data, bare or c.model))]

    def _kwargs(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        c = self.config
        kw: dict[str, Any] = {**c.params, **request.params}
        kw.update(
            model=request.model or c.model,
            messages=[m.to_openai() for m in request.messages],
            stream=stream,
            timeout=c.timeout,
            num_retries=0,
            max_retries=0,
            drop_params=c.drop_params,
        )
        if c.api_base:
            kw["api_base"] = c.api_base
        if c.api_key:
            kw["api_key"] = c.api_key
        return kw

    async def complete(self, request: ChatRequest, state: ProviderState) -> Completion:
        try:
            r = await self.lib.acompletion(**self._kwargs(request, False))
        except Exception as e:
            raise map_error(self.lib, e, self.name, self.config.api_key) from None
        try:
            choice = r.choices[0]
            message = choice.message
        except (AttributeError, IndexError, TypeError):
            raise BadResponse("the answer has no message", provider=self.name) from None
        return Completion(
            message.content or "",
            choice.finish_reason or "stop",
            _usage(getattr(r, "usage", None)),
            _tool_calls(getattr(message, "tool_calls", None)),
            r.model,
        )

    async def stream(self, request: ChatRequest, state: ProviderState) -> AsyncIterator[Delta]:
        # LiteLLM raises both when the call starts and while the stream is read: wrap both.
        response = None
        try:
            response = await self.lib.acompletion(**self._kwargs(request, True))
            async for chunk in response:
                for choice in chunk.choices or ():
                    text = getattr(choice.delta, "content", None) or ""
                    tools = _tool_calls(getattr(choice.delta, "tool_calls", None))
                    if text or tools or choice.finish_reason:
                        yield Delta(text=text, tool_calls=tools, finish_reason=choice.finish_reason)
                usage = _usage(getattr(chunk, "usage", None))
                if usage is not None and usage.total_tokens:
                    yield Delta(usage=usage)
        except Exception as e:
            raise map_error(self.lib, e, self.name, self.config.api_key) from None
        finally:
            if response is not None and hasattr(response, "aclose"):
                with contextlib.suppress(Exception):
                    await response.aclose()  # releases the connection when the caller stops early

    embeds = True

    async def embed(self, request: EmbedRequest) -> Embeddings:
        c = self.config
        model = request.model or c.embedding_model
        if not model:
            raise no_model(self.name, "embedding", "embedding_model")
        kw: dict[str, Any] = {"model": model, "input": [list(x) if isinstance(x, tuple) else x for x in request.inputs]}
        kw.update(timeout=c.timeout, num_retries=0, max_retries=0, drop_params=c.drop_params)
        if request.dimensions is not None:
            kw["dimensions"] = request.dimensions
        if c.api_base:
            kw["api_base"] = c.api_base
        if c.api_key:
            kw["api_key"] = c.api_key
        try:
            r = await self.lib.aembedding(**kw)
        except Exception as e:
            raise map_error(self.lib, e, self.name, c.api_key) from None
        try:
            items = sorted(r.data, key=lambda d: d["index"] if isinstance(d, dict) else d.index)
            vectors = tuple(
                tuple(float(x) for x in (d["embedding"] if isinstance(d, dict) else d.embedding)) for d in items
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            raise BadResponse("the answer is not a list of embeddings", provider=self.name) from None
        return Embeddings(vectors, getattr(r, "model", None) or model, _usage(getattr(r, "usage", None)))


def _usage(u: Any) -> Usage | None:
    if u is None:
        return None
    return Usage(
        getattr(u, "prompt_tokens", 0) or 0, getattr(u, "completion_tokens", 0) or 0, getattr(u, "total_tokens", 0) or 0
    )


def _tool_calls(calls: Any) -> list[JSON] | None:
    """LiteLLM's tool-call objects → OpenAI-shaped dicts."""
    if not calls:
        return None
    return [c.model_dump(exclude_none=True) if hasattr(c, "model_dump") else dict(c) for c in calls]
