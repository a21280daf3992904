"""The `openai` provider against a fake OpenAI-compatible server on loopback."""

from __future__ import annotations

import email.utils
import time

import orjson
import pytest

from providers.openai import OpenAIConfig, OpenAIProvider
from providers.openai_base import retry_after
from proxy.errors import (
    AuthFailed,
    BadResponse,
    Misconfigured,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    RequestRejected,
)
from proxy.types import ChatRequest, Message
from tests.fakes.openai_upstream import FakeOpenAI, error_body
from tests.providers.memstate import MemoryState
from tests.servers import free_port

REQ = ChatRequest((Message("system", "be brief"), Message("user", "hello there")), params={"temperature": 0.5})


@pytest.fixture
async def fake():
    async with FakeOpenAI() as f:
        yield f


def provider(http, base_url, **cfg) -> OpenAIProvider:
    return OpenAIProvider("up", OpenAIConfig(kind="openai", base_url=base_url, **{"api_key": "sk-test-1", **cfg}), http)


async def collect(p, req=REQ):
    return [d async for d in p.stream(req, MemoryState())]


def chunk(delta: dict | None = None, finish: str | None = None, **extra) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return orjson.dumps({"id": "c", "object": "chat.completion.chunk", "choices": choices, **extra})


async def test_non_streaming(http, fake):
    c = await provider(http, fake.base_url, model="m1").complete(REQ, MemoryState())
    assert c.text == "upstream: hello there" and c.finish_reason == "stop" and c.usage.completion_tokens == 3
    sent = fake.requests[0]
    assert sent.key == "sk-test-1" and sent.headers["content-type"] == "application/json"
    assert sent.json["model"] == "m1" and sent.json["temperature"] == 0.5 and "stream" not in sent.json
    assert [m["role"] for m in sent.json["messages"]] == ["system", "user"]


async def test_streaming_deltas_and_usage(http, fake):
    deltas = await collect(provider(http, fake.base_url))
    assert "".join(d.text for d in deltas) == "upstream: hello there"
    assert any(d.finish_reason == "stop" for d in deltas)
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 3
    assert fake.requests[0].json["stream"] is True
    assert fake.requests[0].json["stream_options"] == {"include_usage": True}


async def test_chunks_arriving_apart_stay_apart(http):
    async with FakeOpenAI(answer="abcdefgh", chunks=4, chunk_delay=0.1) as slow:
        pieces = [d.text for d in await collect(provider(http, slow.base_url)) if d.text]
    assert pieces == ["ab", "cd", "ef", "gh"]  # passed on as they arrived


async def test_chunks_arriving_together_go_out_together(http, fake):
    parts = [chunk({"role": "assistant", "content": ""})] + [chunk({"content": c}) for c in ("a", "b", "c")]
    fake.raw_stream(b"".join(b"data: " + p + b"\n\n" for p in [*parts, chunk({}, "stop")]) + b"data: [DONE]\n\n")
    deltas = await collect(provider(http, fake.base_url))
    assert [d.text for d in deltas if d.text] == ["abc"] and deltas[-1].finish_reason == "stop"


async def test_sse_quirks_of_compatible_servers(http, fake):
    """`data:` without a space, comments, `event:` lines, CRLF, a usage chunk with no choices,
    and no [DONE] at all (the server just closes)."""
    fake.raw_stream(
        b": keep-alive\n\n"
        + b"data:"
        + chunk({"role": "assistant"})
        + b"\n\n"
        + b"event: message\r\ndata: "
        + chunk({"content": "Hel"})
        + b"\r\n\r\n"
        + b"data:"
        + chunk({"content": "lo"})
        + b"\n\n"
        + b"data: "
        + chunk({}, "length")
        + b"\n\n"
        + b"data: "
        + chunk(None, usage={"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5})
        + b"\n\n"
    )
    deltas = await collect(provider(http, fake.base_url))
    assert "".join(d.text for d in deltas) == "Hello"
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["length"]
    assert deltas[-1].usage.total_tokens == 5


async def test_tool_call_deltas_pass_through(http, fake):
    fake.tool_call("get_weather", '{"city": "Paris"}')
    deltas = await collect(provider(http, fake.base_url))
    calls = [d.tool_calls[0] for d in deltas if d.tool_calls]
    assert calls[0]["id"] == "call_fake1" and calls[0]["function"]["name"] == "get_weather"
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city": "Paris"}'
    assert deltas[-1].finish_reason == "tool_calls"
    fake.tool_call("get_weather", '{"city": "Oslo"}')
    c = await provider(http, fake.base_url).complete(REQ, MemoryState())
    assert c.finish_reason == "tool_calls" and c.tool_calls[0]["function"]["arguments"] == '{"city": "Oslo"}'


async def test_channel_model_override_and_extra_headers(http, fake):
    p = provider(http, fake.base_url, headers={"x-api2d-no-cache": "1"})
    await p.complete(ChatRequest((Message("user", "x"),), model="big"), MemoryState())
    assert fake.requests[0].json["model"] == "big"
    assert fake.requests[0].headers["x-api2d-no-cache"] == "1"
    await provider(http, fake.base_url).complete(REQ, MemoryState())
    assert "x-api2d-no-cache" not in fake.requests[1].headers  # only when configured


async def test_max_tokens_field_and_stream_usage_off(http, fake):
    p = provider(http, fake.base_url, max_tokens_field="max_completion_tokens", stream_usage=False)
    await collect(p, ChatRequest((Message("user", "x"),), params={"max_tokens": 64}))
    sent = fake.requests[0].json
    assert sent["max_completion_tokens"] == 64 and "max_tokens" not in sent and "stream_options" not in sent


@pytest.mark.parametrize(
    "status,cls",
    [
        (500, ProviderUnavailable),
        (503, ProviderUnavailable),
        (401, AuthFailed),
        (403, AuthFailed),
        (400, RequestRejected),
        (413, RequestRejected),
        (422, RequestRejected),
        (404, Misconfigured),
        (405, Misconfigured),
        (408, ProviderUnavailable),
        (409, ProviderUnavailable),
        (429, RateLimited),
    ],
)
async def test_status_errors_map_to_the_tree(http, fake, status, cls):
    fake.fail(status)
    with pytest.raises(cls) as e:
        await provider(http, fake.base_url).complete(REQ, MemoryState())
    assert e.value.status == status and e.value.message == f"fake failure {status}"


async def test_rate_limit_with_retry_after_and_quota(http, fake):
    fake.fail(429, headers={"Retry-After": "7"})
    with pytest.raises(RateLimited) as e:
        await collect(provider(http, fake.base_url))
    assert e.value.retry_after == 7.0
    fake.fail(429, headers={"retry-after-ms": "250", "Retry-After": "9"})
    with pytest.raises(RateLimited) as e:
        await collect(provider(http, fake.base_url))
    assert e.value.retry_after == 0.25
    fake.quota()
    with pytest.raises(QuotaExceeded) as e:
        await collect(provider(http, fake.base_url))
    assert e.value.status == 429 and not e.value.retryable


async def test_retry_after_as_http_date(http, fake):
    in_an_hour = email.utils.formatdate(time.time() + 3600, usegmt=True)
    fake.fail(429, headers={"Retry-After": in_an_hour})
    with pytest.raises(RateLimited) as e:
        await provider(http, fake.base_url).complete(REQ, MemoryState())
    assert 3500 < e.value.retry_after <= 3600


def test_retry_after_edge_cases():
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({"retry-after-ms": "x", "retry-after": "3"}) == 3.0
    assert retry_after({}) is None


async def test_timeout_before_first_byte(http, fake):
    fake.hang(2)
    with pytest.raises(ProviderTimeout):
        await provider(http, fake.base_url, read_timeout=0.2).complete(REQ, MemoryState())


async def test_timeout_between_chunks_after_first_deltas(http, fake):
    fake.stall_after(1, 2)
    got = []
    with pytest.raises(ProviderTimeout):
        async for d in provider(http, fake.base_url, read_timeout=0.3).stream(REQ, MemoryState()):
            got.append(d.text)
    assert "".join(got) == "upstream:"


async def test_connection_refused(http):
    with pytest.raises(ProviderUnavailable) as e:
        await collect(provider(http, f"http://127.0.0.1:{free_port()}/v1"))
    assert "cannot connect" in str(e.value)


async def test_html_error_page_is_bad_response_free_of_html_noise(http, fake):
    fake.html(502)
    with pytest.raises(BadResponse) as e:
        await provider(http, fake.base_url).complete(REQ, MemoryState())
    assert e.value.status == 502 and e.value.retryable
    assert e.value.message.startswith("non-JSON error body (text/html, ") and "<" not in e.value.message


async def test_key_echoed_by_upstream_is_masked(http, fake):
    key = "sk-live-0123456789abcd"
    fake.fail(401, body=error_body(f"Incorrect API key provided: {key}.", "invalid_request_error", "invalid_api_key"))
    with pytest.raises(AuthFailed) as e:
        await provider(http, fake.base_url, api_key=key).complete(REQ, MemoryState())
    assert key not in str(e.value) and "sk-…abcd" in str(e.value)


async def test_stream_dies_midway_after_first_deltas(http, fake):
    fake.die_after(2)
    got = []
    with pytest.raises(ProviderUnavailable):
        async for d in provider(http, fake.base_url).stream(REQ, MemoryState()):
            got.append(d.text)
    assert "".join(got) == "upstream: hello"


async def test_error_chunk_inside_200_stream(http, fake):
    fake.error_in_stream(after=1)
    got = []
    with pytest.raises(ProviderUnavailable) as e:
        async for d in provider(http, fake.base_url).stream(REQ, MemoryState()):
            got.append(d.text)
    assert "".join(got) == "upstream:" and "server had an error" in e.value.message
    fake.error_in_stream(after=0, code="insufficient_quota", message="You exceeded your current quota.")
    with pytest.raises(QuotaExceeded):
        await collect(provider(http, fake.base_url))


async def test_garbage_answers_are_bad_responses(http, fake):
    fake.fail(200, body={"unexpected": True})
    with pytest.raises(BadResponse):
        await provider(http, fake.base_url).complete(REQ, MemoryState())
    fake.raw_stream(b"data: [1, 2]\n\n")
    with pytest.raises(BadResponse):
        await collect(provider(http, fake.base_url))
    fake.raw_stream(b"data: {not json\n\n")
    with pytest.raises(BadResponse):
        await collect(provider(http, fake.base_url))
    for wrong in (b'{"choices": [5]}', b'{"choices": [{"delta": "x"}]}', b'{"choices": 7}'):
        fake.raw_stream(b"data: " + wrong + b"\n\n")
        with pytest.raises(BadResponse):
            await collect(provider(http, fake.base_url))


async def test_stream_framing_variants_parse_alike(http, fake):
    """`data:` with and without a space, CRLF line ends, comments and event lines, a last line
    without a newline, several choices and a usage chunk."""
    one = b'{"choices": [{"index": 0, "delta": {"content": "a"}}]}'
    two = b'{"choices": [{"index": 0, "delta": {"content": "b"}}, {"index": 1, "delta": {"content": "c"}}]}'
    end = b'{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": {"total_tokens": 3}}'
    fake.raw_stream(b": hi\r\nevent: x\r\ndata:" + one + b"\r\n\r\ndata: " + two + b"\n\ndata: " + end)
    got = await collect(provider(http, fake.base_url))
    assert "".join(d.text for d in got) == "abc"
    assert [d.finish_reason for d in got if d.finish_reason] == ["stop"]
    assert [d.usage.total_tokens for d in got if d.usage] == [3]


async def test_describe_has_no_key(http, fake):
    text = provider(http, fake.base_url, model="m1").describe()
    assert "model=m1" in text and "1 key (1 ok" in text and "sk-test-1" not in text


async def test_context_too_long_is_its_own_caller_error(http, fake):
    """The chat platforms tell the user to /clear on this type, not on a message text match."""
    from proxy.errors import ContextTooLong

    body = {
        "error": {
            "message": "too long",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    fake.fail(400, body)
    with pytest.raises(ContextTooLong) as e:
        await provider(http, fake.base_url).complete(REQ, MemoryState())
    assert (e.value.status, e.value.code, e.value.param) == (400, "context_length_exceeded", "messages")
    fake.error_in_stream(after=0, code="context_length_exceeded", message="too long")
    with pytest.raises(ContextTooLong):
        await collect(provider(http, fake.base_url))
