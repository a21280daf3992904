"""POST /v1/embeddings through the real app, driven by the official `openai` SDK (which asks for
base64 by default) and raw requests, in front of fake OpenAI-compatible upstreams."""

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

KEY = "sk-embed-caller"


def config(first: str, second: str) -> dict[str, Any]:
    return {
        "store": {"url": "memory://"},
        "keys": [{"key": KEY, "name": "rag-bot"}],
        "failover": {"attempts": 1},
        "providers": {
            "echo": {"kind": "echo"},
            "first": {"kind": "openai", "base_url": first, "api_key": "sk-1", "embedding_model": "embed-small"},
            "second": {"kind": "openai", "base_url": second, "api_key": "sk-2", "embedding_model": "embed-small"},
            "nomodel": {"kind": "openai", "base_url": first, "api_key": "sk-1"},
        },
        "channels": [
            {"name": "embed", "providers": ["echo", "first", "second"]},
            {"name": "embed-large", "providers": ["first"], "model": "embed-large"},
            {"name": "chat-only", "providers": ["echo"]},
            {"name": "unset", "providers": ["nomodel"]},
        ],
    }


@pytest.fixture
async def rig() -> AsyncIterator[tuple[FakeOpenAI, FakeOpenAI, str]]:
    async with FakeOpenAI() as a, FakeOpenAI() as b:
        async with serve_asgi(create_app(parse_config(config(a.base_url, b.base_url), {}))) as url:
            yield a, b, url


def embed_requests(fake: FakeOpenAI) -> list[Any]:
    return [r.json for r in fake.requests if r.path.endswith("/embeddings")]


async def test_a_batch_is_embedded_in_input_order_with_the_sdk(rig):
    first, _, url = rig
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    result = await client.embeddings.create(model="embed", input=["a cat", "the dog sat"])  # base64 by default
    assert [d.index for d in result.data] == [0, 1]
    assert [d.embedding for d in result.data] == [[5.0, 0.0, 0.5], [11.0, 1.0, 0.5]]
    assert result.model == "embed" and result.usage.prompt_tokens == 5
    (sent,) = embed_requests(first)
    assert sent == {
        "model": "embed-small",
        "input": ["a cat", "the dog sat"],
        "encoding_format": "float",
        "user": "rag-bot",
    }


async def test_floats_dimensions_and_the_channel_model(rig):
    first, _, url = rig
    async with httpx.AsyncClient() as c:
        r = await c.post(
            f"{url}/v1/embeddings",
            json={"model": "embed-large", "input": [[1, 2, 3]], "encoding_format": "float", "dimensions": 4},
            headers={"authorization": f"Bearer {KEY}"},
        )
    assert r.status_code == 200, r.text
    assert r.json()["data"] == [{"object": "embedding", "index": 0, "embedding": [3.0, 0.0, 0.5, 0.5]}]
    sent = embed_requests(first)[-1]
    assert (sent["model"], sent["input"], sent["dimensions"]) == ("embed-large", [[1, 2, 3]], 4)


async def test_a_failing_provider_fails_over_and_chat_only_providers_are_skipped(rig):
    first, second, url = rig
    first.fail(500)
    async with httpx.AsyncClient() as c:
        r = await c.post(
            f"{url}/v1/embeddings",
            json={"model": "embed", "input": "hello"},
            headers={"authorization": f"Bearer {KEY}"},
        )
        metrics = (await c.get(f"{url}/metrics")).text
    assert r.status_code == 200 and r.headers["x-switchboard-provider"] == "second"
    assert len(embed_requests(second)) == 1
    assert 'switchboard_requests_total{channel="embed",door="embeddings",outcome="ok"} 1.0' in metrics
    assert 'switchboard_failovers_total{channel="embed"} 1.0' in metrics


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        ({"model": "chat-only", "input": "x"}, 400, "model", "can embed: echo (echo)"),
        ({"model": "unset", "input": "x"}, 400, "model", "embedding_model"),
        ({"model": "nope", "input": "x"}, 404, "model", "'nope' does not exist"),
        ({"model": "embed", "input": []}, 400, "input", "must be a string"),
        ({"model": "embed", "input": ["ok", 3]}, 400, "input[0]", "token ids"),
        ({"model": "embed", "input": ["ok", ""]}, 400, "input[1]", "must not be empty"),
        ({"model": "embed", "input": "x", "encoding_format": "hex"}, 400, "encoding_format", "float or base64"),
        ({"model": "embed", "input": "x", "dimensions": 0}, 400, "dimensions", "positive integer"),
    ],
)
async def test_bad_requests_get_an_openai_error_naming_the_field(rig, body, status, param, words):
    first, second, url = rig
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{url}/v1/embeddings", json=body, headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err
    assert err["type"] == "invalid_request_error"
    if param != "model" or status == 404:
        assert embed_requests(first) == embed_requests(second) == []


async def test_a_bad_key_is_a_401(rig):
    _, _, url = rig
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await client.embeddings.create(model="embed", input="hello")
