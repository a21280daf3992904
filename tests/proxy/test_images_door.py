"""POST /v1/images/generations through the real app, driven by the official `openai` SDK, in
front of fake OpenAI-compatible images APIs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from proxy.app import create_app
from proxy.config import parse_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import serve_asgi

KEY = "sk-images-caller"


def config(first: str, second: str) -> dict[str, Any]:
    return {
        "store": {"url": "memory://"},
        "keys": [{"key": KEY}],
        "failover": {"attempts": 1},
        "providers": {
            "echo": {"kind": "echo"},
            "first": {"kind": "openai_image", "base_url": first, "api_key": "sk-1", "size": "1024x1024"},
            "second": {"kind": "openai_image", "base_url": second, "api_key": "sk-2"},
        },
        "channels": [
            {"name": "draw", "providers": ["echo", "first", "second"], "model": "gpt-image-1"},
            {"name": "chat-only", "providers": ["echo"]},
        ],
    }


@pytest.fixture
async def rig() -> AsyncIterator[tuple[FakeOpenAI, FakeOpenAI, str]]:
    async with FakeOpenAI() as a, FakeOpenAI(image_b64=True) as b:
        async with serve_asgi(create_app(parse_config(config(a.base_url, b.base_url), {}))) as url:
            yield a, b, url


def image_requests(fake: FakeOpenAI) -> list[Any]:
    return [r.json for r in fake.requests if r.path.endswith("/images/generations")]


async def test_images_are_generated_with_the_sdk(rig):
    first, _, url = rig
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    result = await client.images.generate(model="draw", prompt="a red fox", n=2, size="512x512", quality="high")
    assert [d.url for d in result.data] == ["https://images.example/0.png", "https://images.example/1.png"]
    assert result.data[0].revised_prompt == "a red fox"
    (sent,) = image_requests(first)
    assert sent == {"model": "gpt-image-1", "prompt": "a red fox", "n": 2, "size": "512x512", "quality": "high"}


async def test_the_provider_defaults_fill_in_and_failover_reaches_the_next(rig):
    first, second, url = rig
    first.fail(503)
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    raw = await client.images.with_raw_response.generate(model="draw", prompt="a fox", response_format="b64_json")
    assert raw.headers["x-switchboard-provider"] == "second"
    assert raw.parse().data[0].b64_json == "aW1hZ2U0"
    (sent,) = image_requests(second)
    assert (sent["n"], sent["size"], sent["response_format"]) == (1, "1024x1024", "b64_json")


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": "chat-only", "prompt": "x"}, "model", "can generate images: echo (echo)"),
        ({"model": "draw"}, "prompt", "'prompt' is required"),
        ({"model": "draw", "prompt": "x", "n": 11}, "n", "from 1 to 10"),
        ({"model": "draw", "prompt": "x", "response_format": "png"}, "response_format", "url or b64_json"),
    ],
)
async def test_bad_requests_are_400s_naming_the_field(rig, body, param, words):
    first, second, url = rig
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{url}/v1/images/generations", json=body, headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"]
    assert image_requests(first) == image_requests(second) == []
