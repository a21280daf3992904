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
from proxy.types import ChatRequest, Delta


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

    async def stream(self, request: ChatRequest, state: ProviderState) -> AsyncIterator[Delta]:
        prompt = next((m.text() for m in reversed(request.messages) if m.role == "user"), "").strip()
        if not prompt:
            raise RequestRejected("describe the image to generate", provider=self.name, status=400)
        c = self.config
        body = {**c.params, "model": request.model or c.model, "prompt": prompt, "n": c.n, "size": c.size}
        async with self.pool.lease(request.conversation, TRANSPORT_ERRORS, transport_error) as key:
            async with self.http.post(
                self.url, data=orjson.dumps(body), headers=self._headers[key.value], timeout=self._timeout
            ) as resp:
                await self.raise_for_status(resp)
                raw = await resp.read()
        images, caption = self._images(raw)
        yield Delta(text=caption or f"Here is your image: {prompt}", images=images, finish_reason="stop")

    def _images(self, raw: bytes) -> tuple[tuple[str, ...], str]:
        try:
            items = orjson.loads(raw)["data"]
            # a URL when the backend gives one; the inline base64 image only when it does not
            urls = tuple(i.get("url") or f"data:image/png;base64,{i['b64_json']}" for i in items)
            caption = next((i.get("revised_prompt") for i in items if i.get("revised_prompt")), "")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise BadResponse("the images answer has no image", provider=self.name) from None
        if not urls:
            raise BadResponse("the images answer has no image", provider=self.name)
        return urls, caption
