"""`openai_image`: image generation through the images API of OpenAI-compatible backends
(`POST {base_url}/images/generations`). The last user message is the prompt; the answer is a
short caption plus the image URLs (`Delta.images`), which chat platforms send as files/links.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

import orjson
from pydantic import Field

from providers.openai_base import OpenAICompatConfig, OpenAICompatProvider
from providers.upstream import TRANSPORT_ERRORS, transport_error
from proxy.contracts import ProviderState
from proxy.errors import BadResponse, RequestRejected
from proxy.types import JSON, ChatRequest, Delta, ImageRequest


class OpenAIImageConfig(OpenAICompatConfig):
    kind: Literal["openai_image"] = "openai_image"
    """`openai_image`: an images/generations API; the user's text is the prompt and the answer links the images."""
    model: str = "dall-e-3"
    """Image model sent upstream unless the channel names one."""
    size: str = "1024x1024"
    """Image size as the API spells it, e.g. `1024x1024`, `1792x1024`."""
    n: int = Field(1, ge=1, le=4)
    """Images per request."""
    read_timeout: float = Field(180.0, gt=0)
    """Seconds to wait for the upstream's answer (image generation is slow)."""


class OpenAIImageProvider(OpenAICompatProvider):
    config_model = OpenAIImageConfig
    path = "/images/generations"
    config: OpenAIImageConfig

    def describe(self) -> str:
        return f"{super().describe()} size={self.config.size}"

    draws = True

    async def stream(self, request: ChatRequest, state: ProviderState) -> AsyncIterator[Delta]:
        prompt = next((m.text() for m in reversed(request.messages) if m.role == "user"), "").strip()
        if not prompt:
            raise RequestRejected("describe the image to generate", provider=self.name, status=400)
        items = await self.draw(ImageRequest(prompt, model=request.model), request.conversation)
        # a URL when the backend gives one; the inline base64 image only when it does not
        urls = tuple(i.get("url") or f"data:image/png;base64,{i['b64_json']}" for i in items)
        caption = next((i.get("revised_prompt") for i in items if i.get("revised_prompt")), "")
        yield Delta(text=caption or f"Here is your image: {prompt}", images=urls, finish_reason="stop")

    async def draw(self, request: ImageRequest, conversation: str = "") -> list[JSON]:
        c = self.config
        body: JSON = {**c.params, **request.params, "model": request.model or c.model, "prompt": request.prompt}
        body["n"] = request.n or c.n
        body["size"] = request.size or c.size
        if request.response_format:
            body["response_format"] = request.response_format
        async with self.pool.lease(conversation, TRANSPORT_ERRORS, transport_error) as key:
            async with self.http.post(
                self.url, data=orjson.dumps(body), headers=self._headers[key.value], timeout=self._timeout
            ) as resp:
                await self.raise_for_status(resp)
                raw = await resp.read()
        try:
            items = orjson.loads(raw)["data"]
            ok = isinstance(items, list) and bool(items)
            ok = ok and all(isinstance(i.get("url") or i["b64_json"], str) for i in items)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            raise BadResponse("the images answer has no image", provider=self.name)
        return [{k: i[k] for k in ("url", "b64_json", "revised_prompt") if i.get(k)} for i in items]
