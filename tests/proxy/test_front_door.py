"""The OpenAI-compatible front door, driven with the official `openai` SDK against a real server."""

from __future__ import annotations

import httpx
import openai
import pytest

from proxy.app import create_app
from proxy.config import parse_config
from tests.servers import serve_asgi

KEY = "sk-test-front"


def config(**over):
    base = {
        "store": {"url": "memory://"},
        "keys": [{"key": KEY}, {"key": "sk-limited", "channels": ["demo"]}],
        "providers": {"echo": {"kind": "echo"}, "off": {"kind": "echo", "prefix": "${UNSET_SECRET}"}},
        "channels": [
            {"name": "demo", "providers": ["echo"]},
            {"name": "prompted", "providers": ["echo"], "prompt": "Be brief."},
            {"name": "private", "providers": ["echo"]},
            {"name": "dead", "providers": ["off"]},
        ],
    }
    base.update(over)
    return parse_config(base, {})


@pytest.fixture
async def base_url():
    async with serve_asgi(create_app(config())) as url:
        yield url


def client(url: str, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


async def test_non_streaming_answer(base_url):
    r = await client(base_url).chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "hello world"}]
    )
    assert r.choices[0].message.content == "echo: hello world"
    assert r.choices[0].finish_reason == "stop"
    assert r.model == "demo" and r.object == "chat.completion"
    assert r.usage is not None and r.usage.completion_tokens == 3


async def test_streaming_answer_with_usage(base_url):
    stream = await client(base_url).chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "a b c"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(pieces) == "echo: a b c"
    assert len([p for p in pieces if p]) == 4  # passed through word by word, not buffered
    assert finish == "stop" and usage is not None and usage.total_tokens > 0


async def test_models_lists_only_allowed_channels(base_url):
    models = await client(base_url).models.list()
    assert {m.id for m in models.data} == {"demo", "prompted", "private"}
    limited = await client(base_url, "sk-limited").models.list()
    assert [m.id for m in limited.data] == ["demo"]
    assert (await client(base_url).models.retrieve("demo")).id == "demo"


async def test_channel_without_an_enabled_provider_is_not_offered(base_url):
    """`dead` has one provider and it is disabled: not listed, and asking for it says why."""
    assert "dead" not in {m.id for m in (await client(base_url).models.list()).data}
    with pytest.raises(openai.NotFoundError) as e:
        await client(base_url).models.retrieve("dead")
    assert e.value.code == "model_not_found" and e.value.param == "model"
    assert "no enabled provider" in e.value.message and "UNSET_SECRET is not set" in e.value.message
    with pytest.raises(openai.NotFoundError):  # the key's permissions still come first
        await client(base_url, "sk-limited").models.retrieve("private")


async def test_bad_key_is_401(base_url):
    with pytest.raises(openai.AuthenticationError) as e:
        await client(base_url, "sk-wrong").chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    async with httpx.AsyncClient() as h:
        r = await h.post(f"{base_url}/v1/chat/completions", json={"model": "demo", "messages": []})
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"


async def test_unknown_or_forbidden_channel_is_404(base_url):
    with pytest.raises(openai.NotFoundError) as e:
        await client(base_url).chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        await client(base_url, "sk-limited").chat.completions.create(
            model="private", messages=[{"role": "user", "content": "x"}]
        )


@pytest.mark.parametrize(
    "body,param",
    [
        (b"{not json", None),
        (b"[1,2]", None),
        (b'{"model": "demo"}', "messages"),
        (b'{"model": "demo", "messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role"),
        (b'{"model": "demo", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (b'{"model": "demo", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
        (b'{"model": "demo", "messages": [{"role": "user", "content": "x"}], "stream_options": {}}', "stream_options"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        # issue 9: an unhashable role was a TypeError (500); content parts are checked too
        (b'{"model": "demo", "messages": [{"role": ["user"], "content": "x"}]}', "messages[0].role"),
        (b'{"model": "demo", "messages": [{"role": {"a": 1}, "content": "x"}]}', "messages[0].role"),
        (b'{"model": "demo", "messages": [{"role": "user", "content": [5]}]}', "messages[0].content[0]"),
        (b'{"model": "demo", "messages": [{"role": "user", "content": [{"text": "x"}]}]}', "messages[0].content[0]"),
        (
            b'{"model": "demo", "messages": [{"role": "user", "content": [{"type": "text", "text": [1]}]}]}',
            "messages[0].content[0].text",
        ),
    ],
)
async def test_malformed_requests_are_400_naming_the_field(base_url, body, param):
    async with httpx.AsyncClient() as h:
        r = await h.post(
            f"{base_url}/v1/chat/completions",
            content=body,
            headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
        )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


async def test_body_too_large_is_413(base_url):
    big = "x" * 2_000_000
    async with httpx.AsyncClient() as h:
        r = await h.post(
            f"{base_url}/v1/chat/completions",
            headers={"authorization": f"Bearer {KEY}"},
            json={"model": "demo", "messages": [{"role": "user", "content": big}]},
        )
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


async def test_channel_with_only_disabled_providers_is_503_saying_why(base_url):
    with pytest.raises(openai.InternalServerError) as e:
        await client(base_url).chat.completions.create(model="dead", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 503
    assert "UNSET_SECRET is not set" in e.value.message


async def test_session_memory_for_stateless_clients(base_url):
    """A client sending only the new turn gets the stored history when it names a session."""
    c = client(base_url)
    sent = []
    for text in ("first", "second"):
        r = await c.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": text}], extra_headers={"X-Conversation-Id": "s1"}
        )
        sent.append(r.choices[0].message.content)
    assert sent == ["echo: first", "echo: second"]
    # The echo provider counts input words in usage: the second turn carried the first exchange.
    r1 = await c.chat.completions.create(model="demo", messages=[{"role": "user", "content": "third"}], user="u-other")
    r2 = await c.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "third"}], extra_headers={"X-Conversation-Id": "s1"}
    )
    assert r2.usage.prompt_tokens > r1.usage.prompt_tokens


async def test_health_and_readiness(base_url):
    async with httpx.AsyncClient() as h:
        assert (await h.get(f"{base_url}/healthz")).json() == {"status": "ok"}
        r = await h.get(f"{base_url}/readyz")  # `dead` cannot be served, the others can
        assert r.status_code == 200 and r.json()["status"] == "degraded"
        m = await h.get(f"{base_url}/metrics")
        assert m.status_code == 200 and "switchboard_provider_attempts" in m.text
        nf = await h.get(f"{base_url}/v1/nothing", headers={"authorization": f"Bearer {KEY}"})
        assert nf.status_code == 404 and nf.json()["error"]["type"] == "invalid_request_error"
