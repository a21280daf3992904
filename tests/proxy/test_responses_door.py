"""POST /v1/responses through the real app, driven by the official `openai` SDK
(`responses.create` and `responses.stream`), in front of a fake OpenAI chat-completions upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from proxy.app import create_app
from proxy.config import parse_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import serve_asgi

KEY, OTHER = "sk-responses-caller", "sk-other-caller"
TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather by city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


def config(upstream: str) -> dict[str, Any]:
    return {
        "store": {"url": "memory://"},
        "keys": [{"key": KEY, "name": "new-bot"}, {"key": OTHER, "name": "other"}],
        "failover": {"attempts": 1},
        "providers": {"up": {"kind": "openai", "base_url": upstream, "api_key": "sk-up", "model": "gpt-up"}},
        "channels": [{"name": "assist", "providers": ["up"]}],
    }


@pytest.fixture
async def rig() -> AsyncIterator[tuple[FakeOpenAI, openai.AsyncOpenAI, str]]:
    async with FakeOpenAI() as up, serve_asgi(create_app(parse_config(config(up.base_url), {}))) as url:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        yield up, client, url


async def test_text_in_text_out(rig):
    up, client, _ = rig
    r = await client.responses.create(
        model="assist", input="hello there", instructions="Be brief.", max_output_tokens=50, temperature=0.3
    )
    assert r.output_text == "upstream: hello there" and r.status == "completed" and r.model == "assist"
    assert r.id.startswith("resp_") and r.usage is not None and (r.usage.input_tokens, r.usage.output_tokens) == (5, 3)
    sent = up.chat_requests()[-1].json
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    assert (sent["max_tokens"], sent["temperature"]) == (50, 0.3)


async def test_streaming_with_the_sdk(rig):
    _, client, _ = rig
    async with client.responses.stream(model="assist", input="hello there") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == "upstream: hello there" == final.output_text
    assert final.status == "completed" and final.usage is not None and final.usage.output_tokens == 3


async def test_the_raw_event_sequence(rig):
    _, _, url = rig
    async with httpx.AsyncClient() as c:
        r = await c.post(
            f"{url}/v1/responses",
            json={"model": "assist", "input": "hello there", "stream": True},
            headers={"authorization": f"Bearer {KEY}"},
        )
    events = [orjson.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


async def test_function_calls_and_their_outputs(rig):
    up, client, _ = rig
    up.tool_call("get_weather", '{"city": "Paris"}')
    r = await client.responses.create(model="assist", input="weather in Paris?", tools=TOOLS, tool_choice="required")
    (call,) = r.output
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == '{"city": "Paris"}'
    sent = up.chat_requests()[-1].json
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather by city",
                "parameters": TOOLS[0]["parameters"],
            },
        }
    ]
    assert sent["tool_choice"] == "required"
    # continue from the stored response with the tool's output
    await client.responses.create(
        model="assist",
        previous_response_id=r.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees"}],
        tools=TOOLS,
    )
    sent = up.chat_requests()[-1].json["messages"]
    assert sent[0] == {"role": "user", "content": "weather in Paris?"}
    assert sent[1]["role"] == "assistant" and sent[1]["tool_calls"][0]["id"] == call.call_id
    assert sent[2] == {"role": "tool", "content": "18 degrees", "tool_call_id": call.call_id}


async def test_a_streamed_function_call(rig):
    up, client, _ = rig
    up.tool_call("get_weather", '{"city": "Paris"}')
    async with client.responses.stream(model="assist", input="weather?", tools=TOOLS) as stream:
        final = await stream.get_final_response()
    (call,) = final.output
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == '{"city": "Paris"}'


async def test_previous_response_id_continues_the_conversation_for_its_key_only(rig):
    up, client, url = rig
    first = await client.responses.create(model="assist", input="my name is Ada", instructions="Be kind.")
    async with client.responses.stream(model="assist", input="what is my name?", previous_response_id=first.id) as s:
        second = await s.get_final_response()
    sent = up.chat_requests()[-1].json["messages"]
    assert sent == [  # the instructions of a request are not carried over
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "upstream: my name is Ada"},
        {"role": "user", "content": "what is my name?"},
    ]
    await client.responses.create(model="assist", input="and again?", previous_response_id=second.id)
    assert len(up.chat_requests()[-1].json["messages"]) == 5
    other = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=OTHER, max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        await other.responses.create(model="assist", input="hi", previous_response_id=first.id)
    assert e.value.code == "previous_response_not_found"


async def test_images_and_message_items(rig):
    up, client, _ = rig
    await client.responses.create(
        model="assist",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "what is this?"},
                    {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"},
                ],
            }
        ],
    )
    (user,) = up.chat_requests()[-1].json["messages"]
    assert user["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0].type"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "previous_response_id": "resp_unknown"}, "previous_response_id"),
        ({"input": "x", "temprature": 1}, "temprature"),
    ],
)
async def test_bad_requests_name_the_field(rig, body, param):
    up, _, url = rig
    async with httpx.AsyncClient() as c:
        r = await c.post(
            f"{url}/v1/responses", json={"model": "assist", **body}, headers={"authorization": f"Bearer {KEY}"}
        )
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"]["param"] == param
    assert up.chat_requests() == []
