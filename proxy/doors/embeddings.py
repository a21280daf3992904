"""The embeddings door: POST /v1/embeddings, OpenAI's API.

`model` names a channel, as for chat; the channel's providers that embed (`openai` kind, and
whatever else implements `Provider.embed`) are tried in chain order with the usual retries,
circuits and failover; the others in the chain are skipped, and a channel with none is a 400 that
says so. The embedding model is the channel's `model`, else the provider's `embedding_model`.

`input` is a string, an array of strings, or token arrays (one array of integers, or an array of
them), up to `MAX_INPUTS` items; `encoding_format` is `float` (default) or `base64` (little-endian
float32, as OpenAI sends it; the upstream is always asked for floats). `dimensions` and `user`
are passed on. Keys, limits (rpm; tokens charged from the upstream's usage), usage accounting,
metrics (`door="embeddings"`) and the log line are the chat doors'.
"""

from __future__ import annotations

import array
import base64
import sys
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from proxy.doors.chat import JSON_HEAD, Trace
from proxy.doors.openai_chat import OpenAICallDoor
from proxy.errors import ChainFailed, RequestError, RequestRejected
from proxy.limiter import NO_GRANT
from proxy.types import EmbedRequest, Usage
from proxy.usage import estimate

#: Inputs per request (OpenAI's limit).
MAX_INPUTS = 2048


def parse_input(raw: Any) -> tuple[str, ...] | tuple[tuple[int, ...], ...]:
    """OpenAI's `input` shapes → a tuple of strings or of token arrays."""
    if isinstance(raw, str):
        if not raw:
            raise RequestError("'input' must not be empty.", param="input")
        return (raw,)
    if not isinstance(raw, list) or not raw:
        raise RequestError("'input' must be a string, an array of strings, or an array of token arrays.", param="input")
    if len(raw) > MAX_INPUTS:
        raise RequestError(f"'input' holds {len(raw)} items; at most {MAX_INPUTS} per request.", param="input")
    if all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        return (tuple(raw),)
    if all(isinstance(x, str) for x in raw):
        for i, x in enumerate(raw):
            if not x:
                raise RequestError(f"input[{i}] must not be empty.", param=f"input[{i}]")
        return tuple(raw)
    tokens = []
    for i, x in enumerate(raw):
        if not isinstance(x, list) or not x or not all(isinstance(t, int) and not isinstance(t, bool) for t in x):
            raise RequestError(
                f"input[{i}] must be a string or a non-empty array of token ids, like the other items.",
                param=f"input[{i}]",
            )
        tokens.append(tuple(x))
    return tuple(tokens)


def encode(vector: tuple[float, ...], fmt: str) -> Any:
    if fmt == "float":
        return vector
    packed = array.array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


class EmbeddingsDoor(OpenAICallDoor):
    """The ASGI app of `POST /v1/embeddings`."""

    door = "embeddings"

    async def serve(self, scope: Scope, receive: Receive, send: Send, trace: Trace) -> None:
        view, _, key_name, data, channel = await self.preamble(scope, receive, trace)
        inputs = parse_input(data.get("input"))
        fmt = data.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise RequestError("'encoding_format' must be float or base64.", param="encoding_format")
        dimensions = data.get("dimensions")
        if dimensions is not None and (
            isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
        ):
            raise RequestError("'dimensions' must be a positive integer.", param="dimensions")
        user = data.get("user")
        if user is not None and not isinstance(user, str):
            raise RequestError("'user' must be a string.", param="user")
        request = EmbedRequest(inputs, channel.config.model, dimensions, f"{key_name}:{user}" if user else key_name)
        limits = view.settings.limits
        grant = await self._admit(limits, key_name, channel, None) if limits.active else NO_GRANT
        try:
            try:
                provider, result = await self.engine.embed(channel, request)
            except ValueError as e:  # no provider of the channel embeds
                raise RequestError(f"{e}.", param="model", code="embeddings_not_supported") from None
            except (RequestRejected, ChainFailed) as e:
                return await self.call_failed(e, channel, send, trace)
            trace.provider, trace.failover = provider, provider != channel.providers[0]
            prompt = result.usage.prompt_tokens if result.usage else sum(_tokens(x) for x in inputs)
            vectors = [
                {"object": "embedding", "index": i, "embedding": encode(v, fmt)} for i, v in enumerate(result.vectors)
            ]
            out = {
                "object": "list",
                "data": vectors,
                "model": channel.name,
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
            }
            head = (*JSON_HEAD, (b"x-switchboard-provider", provider.encode()))
            await trace.reply(send, 200, orjson.dumps(out), head)
            usage = result.usage or Usage(prompt, 0, prompt)  # estimated when the upstream said nothing
            p, c, _ = self.engine.usage.note(
                channel=channel.name, provider=provider, model=result.model, key=key_name, usage=usage
            )
            trace.tokens = (p, c, result.usage is None)
            await grant.finish(usage, "")
        finally:
            await grant.release()


def _tokens(x: str | tuple[int, ...]) -> int:
    return estimate(x) if isinstance(x, str) else len(x)
