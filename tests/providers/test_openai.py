"""The `openai` provider against a fake OpenAI-compatible server on loopback."""

from __future__ import annotations

import aiohttp
import pytest

from providers.openai import OpenAIConfig, OpenAIProvider
from proxy.engine import NO_STATE
from proxy.errors import (
    AuthFailed,
    BadResponse,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    RequestRejected,
)
from proxy.types import ChatRequest, Message
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import free_port

REQ = ChatRequest((Message("system", "be brief"), Message("user", "hello there")), params={"temperature": 0.5})


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def fake():
    async with FakeOpenAI() as f:
        yield f


def provider(http, base_url, **cfg) -> OpenAIProvider:
    return OpenAIProvider("up", OpenAIConfig(kind="openai", base_url=base_url, **{"api_key": "sk-test-1", **cfg}), http)


async def collect(p, req=REQ):
    return [d async for d in p.stream(req, NO_STATE)]


async def test_non_streaming(http, fake):
    c = await provider(http, fake.base_url, model="m1").complete(REQ, NO_STATE)
    assert c.text == "upstream: hello there" and c.finish_reason == "stop" and c.usage.completion_tokens == 3
    sent = fake.requests[0]
    assert sent.key == "sk-test-1"
    assert sent.json["model"] == "m1" and sent.json["temperature"] == 0.5 and "stream" not in sent.json
    assert [m["role"] for m in sent.json["messages"]] == ["system", "user"]


async def test_streaming_deltas_and_usage(http, fake):
    deltas = await collect(provider(http, fake.base_url))
    assert "".join(d.text for d in deltas) == "upstream: hello there"
    assert any(d.finish_reason == "stop" for d in deltas)
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 3
    assert fake.requests[0].json["stream_options"] == {"include_usage": True}


async def test_chunks_arriving_apart_stay_apart_and_together_merge(http):
    async with FakeOpenAI(chunk_delay=0.05) as slow:
        pieces = [d.text for d in await collect(provider(http, slow.base_url)) if d.text]
    assert pieces == ["upstream:", " hello", " there"]  # passed on as they arrived
    async with FakeOpenAI() as fast:
        pieces = [d.text for d in await collect(provider(http, fast.base_url)) if d.text]
    assert "".join(pieces) == "upstream: hello there" and len(pieces) < 3  # one read, one write


async def test_channel_model_override_and_extra_headers(http, fake):
    p = provider(http, fake.base_url, headers={"x-api2d-no-cache": "1"})
    await p.complete(ChatRequest((Message("user", "x"),), model="big"), NO_STATE)
    assert fake.requests[0].json["model"] == "big"
    assert fake.requests[0].headers["x-api2d-no-cache"] == "1"


@pytest.mark.parametrize(
    "status,cls",
    [
        (500, ProviderUnavailable),
        (503, ProviderUnavailable),
        (401, AuthFailed),
        (400, RequestRejected),
        (404, RequestRejected),
    ],
)
async def test_status_errors_map_to_the_tree(http, fake, status, cls):
    fake.fail(status)
    with pytest.raises(cls) as e:
        await provider(http, fake.base_url).complete(REQ, NO_STATE)
    assert e.value.status == status and "sk-test-1" not in str(e.value)


async def test_rate_limit_with_retry_after_and_quota(http, fake):
    fake.fail(429, headers={"Retry-After": "7"})
    with pytest.raises(RateLimited) as e:
        await collect(provider(http, fake.base_url))
    assert e.value.retry_after == 7.0
    fake.fail(429, headers={"retry-after-ms": "250"})
    with pytest.raises(RateLimited) as e:
        await collect(provider(http, fake.base_url))
    assert e.value.retry_after == 0.25
    fake.quota()
    with pytest.raises(QuotaExceeded):
        await collect(provider(http, fake.base_url))


async def test_timeout(http, fake):
    fake.hang(2)
    with pytest.raises(ProviderTimeout):
        await provider(http, fake.base_url, read_timeout=0.2).complete(REQ, NO_STATE)


async def test_connection_refused(http):
    with pytest.raises(ProviderUnavailable) as e:
        await collect(provider(http, f"http://127.0.0.1:{free_port()}/v1"))
    assert "cannot connect" in str(e.value)


async def test_html_error_page_is_bad_response_free_of_html_noise(http, fake):
    fake.html(502)
    with pytest.raises(ProviderUnavailable) as e:
        await provider(http, fake.base_url).complete(REQ, NO_STATE)
    assert e.value.status == 502 and "non-JSON" in e.value.message


async def test_stream_dies_midway_after_first_deltas(http, fake):
    fake.die_after(2)
    got = []
    with pytest.raises(ProviderUnavailable):
        async for d in provider(http, fake.base_url).stream(REQ, NO_STATE):
            got.append(d.text)
    assert "".join(got) == "upstream: hello"


async def test_error_chunk_inside_200_stream(http, fake):
    fake.error_in_stream(after=1)
    with pytest.raises(ProviderUnavailable):
        await collect(provider(http, fake.base_url))


async def test_garbage_completion_is_bad_response(http, fake):
    fake.fail(200, body={"unexpected": True})
    with pytest.raises(BadResponse):
        await provider(http, fake.base_url).complete(REQ, NO_STATE)
