"""`openai_image` against the fake images endpoint."""

from __future__ import annotations

import aiohttp
import pytest

from providers.openai_image import OpenAIImageConfig, OpenAIImageProvider
from proxy.errors import AuthFailed, BadResponse, ProviderUnavailable, RequestRejected
from proxy.types import ChatRequest, Message
from tests.fakes.openai_upstream import FakeOpenAI
from tests.providers.memstate import MemoryState


def image_provider(http, fake, **cfg) -> OpenAIImageProvider:
    config = OpenAIImageConfig(kind="openai_image", base_url=fake.base_url, **{"api_key": "sk-i", **cfg})
    return OpenAIImageProvider("img", config, http)


def ask(text: str) -> ChatRequest:
    return ChatRequest((Message("user", "earlier"), Message("assistant", "ok"), Message("user", text)))


async def test_generates_image_urls_from_last_user_text():
    async with FakeOpenAI() as fake, aiohttp.ClientSession() as http:
        p = image_provider(http, fake, n=2, size="512x512")
        (d,) = [d async for d in p.stream(ask("a red fox"), MemoryState())]
        assert d.images == ("https://images.example/0.png", "https://images.example/1.png")
        assert d.text == "a red fox" and d.finish_reason == "stop"  # the revised prompt as caption
        sent = fake.requests[-1]
        assert sent.path == "/v1/images/generations" and sent.key == "sk-i"
        assert sent.json == {"model": "dall-e-3", "prompt": "a red fox", "n": 2, "size": "512x512"}
        c = await p.complete(ask("a blue fox"), MemoryState())
        assert c.images == ("https://images.example/0.png", "https://images.example/1.png")


async def test_b64_answers_become_data_urls():
    async with FakeOpenAI(image_b64=True) as fake, aiohttp.ClientSession() as http:
        (d,) = [d async for d in image_provider(http, fake).stream(ask("a cat"), MemoryState())]
        assert d.images == ("data:image/png;base64,aW1hZ2U0",) and d.text == "Here is your image: a cat"


async def test_errors():
    async with FakeOpenAI() as fake, aiohttp.ClientSession() as http:
        p = image_provider(http, fake)
        fake.fail(500)
        with pytest.raises(ProviderUnavailable):
            [d async for d in p.stream(ask("x"), MemoryState())]
        fake.fail(200, body={"data": []})
        with pytest.raises(BadResponse):
            [d async for d in p.stream(ask("x"), MemoryState())]
        with pytest.raises(RequestRejected):
            [d async for d in p.stream(ask("  "), MemoryState())]


async def test_key_pool_is_reused():
    async with FakeOpenAI() as fake, aiohttp.ClientSession() as http:
        p = image_provider(http, fake, api_key=None, api_keys=["sk-img-bad-1111", "sk-img-good-2222"])
        fake.key_rejected.add("sk-img-bad-1111")
        results = []
        for _ in range(3):
            try:
                (d,) = [d async for d in p.stream(ask("x"), MemoryState())]
                results.append(d.images)
            except AuthFailed:
                results.append("auth")
        assert results.count("auth") == 1 and len(results) == 3
        assert "disabled" in str(p.key_status()) and "bad" not in str(p.key_status())
