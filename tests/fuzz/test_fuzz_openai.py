"""The OpenAI front door with a valid API key and structurally wrong bodies: always a 4xx in
OpenAI's error JSON or an answer, never a 5xx; nothing stored for a refused request."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fakes.openai_upstream import FakeOpenAI
from tests.fuzz.rig import FUZZ, Rig, body_of

KEY = "sk-fuzz"
HEADERS = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
REQUESTS: list[dict[str, Any]] = [
    {"model": "demo", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]},
    {
        "model": "relay",
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "u1",
        "temperature": 0.2,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ],
    },
]


@pytest.fixture
async def rig():
    async with FakeOpenAI() as upstream:
        config = {
            "store": {"url": "memory://"},
            "keys": [{"key": KEY}],
            "failover": {"attempts": 1},
            "providers": {
                "echo": {"kind": "echo"},
                "up": {"kind": "openai", "base_url": upstream.base_url, "api_key": "sk-up"},
            },
            "channels": [{"name": "demo", "providers": ["echo"]}, {"name": "relay", "providers": ["up"]}],
        }
        async with Rig(config).running() as r:
            yield r
            ok = await r.send("/v1/chat/completions", orjson.dumps(REQUESTS[0]), HEADERS)
            assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "echo: hi"


@FUZZ
@given(body=st.sampled_from(REQUESTS).flatmap(body_of), session=st.sampled_from([None, "alice"]))
async def test_wrongly_shaped_chat_completions_are_4xx_or_answered(rig: Rig, body: bytes, session: str | None):
    headers = HEADERS if session is None else {**HEADERS, "x-conversation-id": session}
    r = await rig.send("/v1/chat/completions", body, headers)
    if r.status_code >= 400:
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and isinstance(error["message"], str)
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.endswith("data: [DONE]\n\n") or '"code":"stream_interrupted"' in r.text
    else:
        assert r.json()["object"] == "chat.completion"
