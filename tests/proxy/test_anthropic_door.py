"""The Anthropic Messages door, driven by the official `anthropic` SDK against Switchboard served
by uvicorn on loopback, in front of a fake OpenAI-compatible upstream (any dialect in, any
provider out). What the SDK parses and what reached the upstream are both checked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from proxy.app import create_app
from proxy.config import parse_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import serve_asgi

KEY = "sk-switchboard-anthropic-1"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def config(upstream: str) -> dict[str, Any]:
    return {
        "store": {"url": "memory://"},
        "keys": [{"key": KEY, "name": "claude-bot"}],
        "failover": {"attempts": 1},
        "providers": {"up": {"kind": "openai", "base_url": upstream, "api_key": "sk-up", "model": "gpt-up"}},
        "channels": [
            {"name": "claude-compatible", "providers": ["up"], "prompt": "Answer briefly."},
            {"name": "plain", "providers": ["up"]},
        ],
    }


@pytest.fixture
async def rig() -> AsyncIterator[tuple[FakeOpenAI, anthropic.AsyncAnthropic, str]]:
    async with FakeOpenAI() as up, serve_asgi(create_app(parse_config(config(up.base_url), {}))) as url:
        client = anthropic.AsyncAnthropic(base_url=url, api_key=KEY, max_retries=0)
        yield up, client, url
        await client.close()


HELLO = [{"role": "user", "content": "hello there"}]


async def test_a_message_is_answered_and_translated_both_ways(rig):
    up, client, _ = rig
    msg = await client.messages.create(
        model="plain",
        max_tokens=64,
        system="You are terse.",
        stop_sequences=["END"],
        messages=HELLO,
        extra_body={"temperature": 0.2},  # older API versions and their clients send it
    )
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == "upstream: hello there"
    assert msg.role == "assistant" and msg.model == "plain" and msg.id.startswith("msg_")
    assert msg.stop_reason == "end_turn" and (msg.usage.input_tokens, msg.usage.output_tokens) == (5, 3)
    sent = up.chat_requests()[-1].json
    assert sent["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hello there"},
    ]
    assert (sent["max_tokens"], sent["temperature"], sent["stop"], sent["model"]) == (64, 0.2, ["END"], "gpt-up")


async def test_the_channel_prompt_comes_first_and_system_blocks_are_joined(rig):
    up, client, _ = rig
    await client.messages.create(
        model="claude-compatible",
        max_tokens=10,
        system=[{"type": "text", "text": "Part one."}, {"type": "text", "text": "Part two."}],
        messages=HELLO,
    )
    sent = up.chat_requests()[-1].json["messages"]
    assert sent[:2] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "system", "content": "Part one.\nPart two."},
    ]


async def test_streaming_follows_anthropics_event_sequence(rig):
    _, client, _ = rig
    async with client.messages.stream(model="plain", max_tokens=64, messages=HELLO) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "upstream: hello there" == final.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 3
    assert final.usage.input_tokens == 5  # the upstream's figure, sent with message_delta


async def test_the_raw_stream_has_every_event_in_order(rig):
    _, _, url = rig
    body = {"model": "plain", "max_tokens": 64, "stream": True, "messages": HELLO}
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{url}/v1/messages", json=body, headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line[len("event: ") :] for line in r.text.splitlines() if line.startswith("event: ")]
    assert events[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(events[3:-3]) == {"content_block_delta"}
    data = [orjson.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert data[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}


async def test_tool_use_round_trip(rig):
    up, client, _ = rig
    tools = [
        {
            "name": "get_weather",
            "description": "Weather by city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    up.tool_call("get_weather", '{"city": "Paris"}')
    msg = await client.messages.create(
        model="plain", max_tokens=64, messages=HELLO, tools=tools, tool_choice={"type": "any"}
    )
    assert msg.stop_reason == "tool_use"
    (call,) = msg.content
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Paris"}
    sent = up.chat_requests()[-1].json
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": tools[0]["input_schema"],
                "description": "Weather by city",
            },
        }
    ]
    assert sent["tool_choice"] == "required"
    # the caller runs the tool and sends its result back
    await client.messages.create(
        model="plain",
        max_tokens=64,
        tools=tools,
        messages=[
            *HELLO,
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "18 degrees"},
                    {"type": "text", "text": "and tomorrow?"},
                ],
            },
        ],
    )
    sent = up.chat_requests()[-1].json["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
        ],
    }
    assert sent[2] == {"role": "tool", "content": "18 degrees", "tool_call_id": call.id}
    assert sent[3] == {"role": "user", "content": "and tomorrow?"}


async def test_a_streamed_tool_call_arrives_as_input_json_deltas(rig):
    up, client, _ = rig
    up.tool_call("get_weather", '{"city": "Paris"}')
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    async with client.messages.stream(model="plain", max_tokens=64, messages=HELLO, tools=tools) as stream:
        final = await stream.get_final_message()
    (call,) = final.content
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"


async def test_images_go_upstream_as_image_parts(rig):
    up, client, _ = rig
    await client.messages.create(
        model="plain",
        max_tokens=10,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                    {"type": "text", "text": "what are these?"},
                ],
            }
        ],
    )
    (user,) = up.chat_requests()[-1].json["messages"]
    assert user["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "what are these?"},
    ]


async def test_count_tokens_estimates_the_prompt(rig):
    _, client, _ = rig
    short = await client.messages.count_tokens(model="plain", messages=HELLO)
    long = await client.messages.count_tokens(model="claude-compatible", system="x" * 400, messages=HELLO)
    assert 0 < short.input_tokens < long.input_tokens


async def test_errors_come_in_anthropics_shape_with_the_same_statuses(rig):
    up, client, url = rig
    with pytest.raises(anthropic.AuthenticationError) as bad_key:
        await anthropic.AsyncAnthropic(base_url=url, api_key="sk-wrong", max_retries=0).messages.create(
            model="plain", max_tokens=5, messages=HELLO
        )
    assert bad_key.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as unknown:
        await client.messages.create(model="nope", max_tokens=5, messages=HELLO)
    assert "nope" in unknown.value.message
    with pytest.raises(anthropic.BadRequestError) as no_messages:
        await client.messages.create(model="plain", max_tokens=5, messages=[])
    assert no_messages.value.body["error"]["message"].startswith("messages:")  # type: ignore[index]
    up.fail(500)
    with pytest.raises(anthropic.APIStatusError) as failed:
        await client.messages.create(model="plain", max_tokens=5, messages=HELLO)
    assert failed.value.status_code == 502 and failed.value.body["error"]["type"] == "api_error"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]},
            "messages.0.content.0.source.type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages.0.content.0.type",
        ),
        ({"messages": HELLO, "max_tokens": "lots"}, "max_tokens"),
        ({"messages": HELLO, "tools": [{"name": "x"}]}, "tools.0.input_schema"),
        ({"messages": HELLO, "tool_choice": {"type": "sometimes"}}, "tool_choice"),
        ({"messages": HELLO, "temprature": 1}, "temprature"),
        ({"messages": HELLO, "stream": "yes"}, "stream"),
    ],
)
async def test_a_malformed_body_gets_a_400_naming_the_field(rig, body: dict[str, Any], field: str):
    up, _, url = rig
    before = len(up.chat_requests())
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{url}/v1/messages", json={"model": "plain", **body}, headers={"x-api-key": KEY})
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert err["error"]["message"].startswith(f"{field}:"), err
    assert len(up.chat_requests()) == before  # nothing went upstream


async def test_bearer_keys_work_and_requests_are_counted_under_their_door(rig):
    _, _, url = rig
    async with httpx.AsyncClient() as c:
        r = await c.post(
            f"{url}/v1/messages",
            json={"model": "plain", "max_tokens": 5, "messages": HELLO},
            headers={"authorization": f"Bearer {KEY}"},
        )
        assert r.status_code == 200 and r.json()["content"][0]["text"] == "upstream: hello there"
        assert r.headers["x-request-id"]
        metrics = (await c.get(f"{url}/metrics")).text
    assert 'switchboard_requests_total{channel="plain",door="anthropic",outcome="ok"} 1.0' in metrics
