"""A request feature a channel's provider cannot serve: with tools or images, a Dify provider in
the chain is skipped (a Dify app's tools are its own; only text reaches it), and a channel of
Dify providers only answers a 400 that names them, in the caller's dialect, before any upstream
is called."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from proxy.app import create_app
from proxy.config import parse_config
from tests.fakes.dify import FakeDify
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import serve_asgi

KEY = "sk-features"
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


def config(dify: str, upstream: str) -> dict[str, Any]:
    return {
        "store": {"url": "memory://"},
        "keys": [{"key": KEY}],
        "providers": {
            "kb": {"kind": "dify", "base_url": dify, "api_key": "app-kb"},
            "gpt": {"kind": "openai", "base_url": upstream, "api_key": "sk-up"},
        },
        "channels": [
            {"name": "mixed", "providers": ["kb", "gpt"]},
            {"name": "dify-only", "providers": ["kb"]},
        ],
    }


async def test_tools_skip_dify_and_a_dify_only_channel_refuses_them():
    async with FakeDify() as dify, FakeOpenAI() as up:
        async with serve_asgi(create_app(parse_config(config(dify.base_url, up.base_url), {}))) as url:
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
            hi = [{"role": "user", "content": "hi"}]
            raw = await client.chat.completions.with_raw_response.create(model="mixed", messages=hi, tools=[TOOL])  # type: ignore[list-item]
            assert raw.headers["x-switchboard-provider"] == "gpt"
            plain = await client.chat.completions.with_raw_response.create(model="mixed", messages=hi)  # type: ignore[arg-type]
            assert plain.headers["x-switchboard-provider"] == "kb"  # without tools, the chain as configured
            with pytest.raises(openai.BadRequestError) as e:
                await client.chat.completions.create(model="dify-only", messages=hi, tools=[TOOL])  # type: ignore[list-item]
            assert e.value.param == "tools" and "can use tools: kb (dify)" in e.value.message
            claude = anthropic.AsyncAnthropic(base_url=url, api_key=KEY, max_retries=0)
            with pytest.raises(anthropic.BadRequestError) as a:
                await claude.messages.create(
                    model="dify-only",
                    max_tokens=10,
                    messages=[{"role": "user", "content": "hi"}],
                    tools=[{"name": "lookup", "input_schema": {"type": "object"}}],
                )
            assert a.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
            picture = [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
                    ],
                }
            ]
            seen = await client.chat.completions.with_raw_response.create(model="mixed", messages=picture)  # type: ignore[arg-type]
            assert seen.headers["x-switchboard-provider"] == "gpt"  # Dify gets only text: skipped
            with pytest.raises(openai.BadRequestError) as img:
                await client.chat.completions.create(model="dify-only", messages=picture)  # type: ignore[arg-type]
            assert img.value.param == "messages" and "can take images: kb (dify)" in img.value.message
            assert len(up.chat_requests()) == 2
