"""`openai_image` against the fake images endpoint."""

import aiohttp
import pytest

from providers.openai_image import OpenAIImageConfig, OpenAIImageProvider
from proxy.engine import NO_STATE
from proxy.errors import ProviderUnavailable, RequestRejected
from proxy.types import ChatRequest, Message
from tests.fakes.openai_upstream import FakeOpenAI


async def test_generates_image_urls_from_last_user_text():
    async with FakeOpenAI() as fake, aiohttp.ClientSession() as http:
        p = OpenAIImageProvider(
            "img", OpenAIImageConfig(kind="openai_image", base_url=fake.base_url, api_key="sk-i", n=2), http
        )
        (d,) = [d async for d in p.stream(ChatRequest((Message("user", "a red fox"),)), NO_STATE)]
        assert d.images == ("https://images.example/0.png", "https://images.example/1.png")
        sent = fake.requests[-1]
        assert sent.path == "/v1/images/generations" and sent.json["prompt"] == "a red fox" and sent.json["n"] == 2
        assert sent.key == "sk-i"
        fake.fail(500)
        with pytest.raises(ProviderUnavailable):
            [d async for d in p.stream(ChatRequest((Message("user", "x"),)), NO_STATE)]
        with pytest.raises(RequestRejected):
            [d async for d in p.stream(ChatRequest((Message("user", "  "),)), NO_STATE)]
