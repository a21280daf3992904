"""The images door: POST /v1/images/generations, OpenAI's API.

`model` names a channel; its providers that generate images (`openai_image`) are tried in chain
order with retries, circuits and failover, the others skipped (a channel with none is a 400 that
says so). `prompt` is required; `n` (1–10), `size`, `response_format` (`url` or `b64_json`) and
`user` are passed on, and so are `quality`, `style`, `background`, `output_format` and
`moderation`; the provider's config fills in what the caller left out. The answer is the
upstream's `data` items as they came (`url` or `b64_json`, `revised_prompt`). Keys, rpm limits,
metrics (`door="images"`) and the log line are the chat doors'; image generation reports no
tokens, so none are recorded.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from proxy.doors.chat import JSON_HEAD, Trace
from proxy.doors.openai_chat import OpenAICallDoor
from proxy.errors import ChainFailed, RequestError, RequestRejected
from proxy.limiter import NO_GRANT
from proxy.types import ImageRequest

#: Images-API fields passed on as they are (strings).
PASSED = ("quality", "style", "background", "output_format", "moderation")


def parse(data: dict[str, Any], model: str | None, user: str) -> ImageRequest:
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("'prompt' is required: a description of the image.", param="prompt")
    n = data.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10):
        raise RequestError("'n' must be an integer from 1 to 10.", param="n")
    size = data.get("size")
    if size is not None and not isinstance(size, str):
        raise RequestError("'size' must be a string such as 1024x1024.", param="size")
    fmt = data.get("response_format")
    if fmt is not None and fmt not in ("url", "b64_json"):
        raise RequestError("'response_format' must be url or b64_json.", param="response_format")
    params = {}
    for name in PASSED:
        value = data.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise RequestError(f"'{name}' must be a string.", param=name)
            params[name] = value
    caller = data.get("user")
    if caller is not None and not isinstance(caller, str):
        raise RequestError("'user' must be a string.", param="user")
    return ImageRequest(prompt, n, size, fmt, model, params, f"{user}:{caller}" if caller else user)


class ImagesDoor(OpenAICallDoor):
    """The ASGI app of `POST /v1/images/generations`."""

    door = "images"

    async def serve(self, scope: Scope, receive: Receive, send: Send, trace: Trace) -> None:
        view, _, key_name, data, channel = await self.preamble(scope, receive, trace)
        request = parse(data, channel.config.model, key_name)
        limits = view.settings.limits
        grant = await self._admit(limits, key_name, channel, None) if limits.active else NO_GRANT
        try:
            try:
                provider, items = await self.engine.draw(channel, request)
            except ValueError as e:  # no provider of the channel generates images
                raise RequestError(f"{e}.", param="model", code="images_not_supported") from None
            except (RequestRejected, ChainFailed) as e:
                return await self.call_failed(e, channel, send, trace)
            trace.provider, trace.failover = provider, provider != channel.providers[0]
            body = orjson.dumps({"created": int(time.time()), "data": items})
            await trace.reply(send, 200, body, (*JSON_HEAD, (b"x-switchboard-provider", provider.encode())))
        finally:
            await grant.release()
