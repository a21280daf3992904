"""The Dify Service API door (`/dify/v1`), driven by the `dify-client` library (sync, run in a
thread) and by raw requests shaped like dify-on-wechat's, in front of a fake OpenAI upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from dify_client import ChatClient, CompletionClient

from proxy.app import create_app
from proxy.config import parse_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import serve_asgi

APP, BROAD = "app-support-key-1", "sk-broad-key"


def config(upstream: str) -> dict[str, Any]:
    return {
        "store": {"url": "memory://"},
        "keys": [
            {"key": APP, "name": "support-app", "channels": ["support"], "dify_channel": "support"},
            {"key": BROAD, "name": "broad"},
        ],
        "failover": {"attempts": 1},
        "providers": {"up": {"kind": "openai", "base_url": upstream, "api_key": "sk-up"}},
        "channels": [
            {"name": "support", "providers": ["up"], "description": "Ask me about orders."},
            {"name": "other", "providers": ["up"]},
        ],
    }


@pytest.fixture
async def rig() -> AsyncIterator[tuple[FakeOpenAI, str]]:
    async with FakeOpenAI() as up, serve_asgi(create_app(parse_config(config(up.base_url), {}))) as url:
        yield up, url


def chat_client(url: str, key: str = APP) -> ChatClient:
    client = ChatClient(key)
    client.base_url = f"{url}/dify/v1"
    return client


def events(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


async def test_a_conversation_with_the_dify_client(rig):
    up, url = rig
    client = chat_client(url)
    first = await asyncio.to_thread(client.create_chat_message, {}, "hello there", "alice")
    assert first.status_code == 200, first.text
    one = first.json()
    assert one["answer"] == "upstream: hello there" and one["mode"] == "chat"
    assert one["conversation_id"] and one["message_id"] and one["task_id"]
    assert one["metadata"]["usage"]["total_tokens"] == 8
    cid = one["conversation_id"]
    second = await asyncio.to_thread(client.create_chat_message, {}, "and again", "alice", "blocking", cid)
    assert second.json()["conversation_id"] == cid
    assert up.chat_requests()[-1].json["messages"] == [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "upstream: hello there"},
        {"role": "user", "content": "and again"},
    ]
    listed = (await asyncio.to_thread(client.get_conversations, "alice")).json()
    assert [(c["id"], c["name"]) for c in listed["data"]] == [(cid, "hello there")] and not listed["has_more"]
    history = (await asyncio.to_thread(client.get_conversation_messages, "alice", cid)).json()
    assert [(m["query"], m["answer"]) for m in history["data"]] == [
        ("hello there", "upstream: hello there"),
        ("and again", "upstream: and again"),
    ]
    renamed = (await asyncio.to_thread(client.rename_conversation, cid, "Orders", "alice")).json()
    assert renamed["name"] == "Orders"
    # another user of the same app cannot see or continue it
    theirs = await asyncio.to_thread(client.get_conversation_messages, "mallory", cid)
    assert theirs.status_code == 404 and theirs.json() == {
        "code": "not_found",
        "message": "Conversation Not Exists.",
        "status": 404,
    }
    hijack = await asyncio.to_thread(client.create_chat_message, {}, "hi", "mallory", "blocking", cid)
    assert hijack.status_code == 404
    async with httpx.AsyncClient() as c:
        gone = await c.request(
            "DELETE",
            f"{url}/dify/v1/conversations/{cid}",
            json={"user": "alice"},
            headers={"authorization": f"Bearer {APP}"},
        )
    assert gone.json() == {"result": "success"}
    assert (await asyncio.to_thread(client.get_conversations, "alice")).json()["data"] == []


async def test_streaming_like_dify_on_wechat(rig):
    _, url = rig
    body = {"inputs": {}, "query": "hello there", "response_mode": "streaming", "conversation_id": "", "user": "wx-1"}
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{url}/dify/v1/chat-messages", json=body, headers={"authorization": f"Bearer {APP}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    got = events(r.text)
    assert {e["event"] for e in got[:-1]} == {"message"}
    assert "".join(e["answer"] for e in got[:-1]) == "upstream: hello there"
    end = got[-1]
    assert end["event"] == "message_end" and end["metadata"]["usage"]["completion_tokens"] == 3
    assert len({e["conversation_id"] for e in got}) == 1 and len({e["message_id"] for e in got}) == 1


async def test_stop_ends_a_streaming_answer(rig):
    up, url = rig
    up.answer, up.chunk_delay = " ".join(["word"] * 40), 0.05
    body = {"inputs": {}, "query": "talk", "response_mode": "streaming", "user": "alice"}
    headers = {"authorization": f"Bearer {APP}"}
    seen: list[dict[str, Any]] = []
    async with httpx.AsyncClient() as c:
        async with c.stream("POST", f"{url}/dify/v1/chat-messages", json=body, headers=headers) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    seen.append(orjson.loads(line[6:]))
                    if len(seen) == 2:
                        stop = await c.post(
                            f"{url}/dify/v1/chat-messages/{seen[0]['task_id']}/stop",
                            json={"user": "alice"},
                            headers=headers,
                        )
                        assert stop.json() == {"result": "success"}
    assert seen[-1]["event"] == "message_end"
    answer = "".join(e.get("answer", "") for e in seen)
    assert 0 < len(answer) < len(up.answer)


async def test_completion_and_workflow_runs(rig):
    _, url = rig
    client = CompletionClient(APP)
    client.base_url = f"{url}/dify/v1"
    done = (
        await asyncio.to_thread(client.create_completion_message, {"query": "summarize this"}, "blocking", "bob")
    ).json()
    assert done["answer"] == "upstream: summarize this" and done["mode"] == "completion"
    headers = {"authorization": f"Bearer {APP}"}
    async with httpx.AsyncClient() as c:
        run = await c.post(
            f"{url}/dify/v1/workflows/run",
            json={"inputs": {"text": "translate me"}, "response_mode": "blocking", "user": "bob"},
            headers=headers,
        )
        streamed = await c.post(
            f"{url}/dify/v1/workflows/run",
            json={"inputs": {"query": "translate me"}, "response_mode": "streaming", "user": "bob"},
            headers=headers,
        )
    data = run.json()["data"]
    assert data["status"] == "succeeded" and data["outputs"] == {"text": "upstream: translate me"}
    got = events(streamed.text)
    assert got[0]["event"] == "workflow_started" and got[-1]["event"] == "workflow_finished"
    assert "".join(e["data"]["text"] for e in got if e["event"] == "text_chunk") == "upstream: translate me"
    assert got[-1]["data"]["outputs"] == {"text": "upstream: translate me"}


async def test_app_info_endpoints_answer(rig):
    _, url = rig
    client = chat_client(url)
    params = (await asyncio.to_thread(client.get_application_parameters, "alice")).json()
    assert params["opening_statement"] == "Ask me about orders." and params["user_input_form"] == []
    async with httpx.AsyncClient() as c:
        headers = {"authorization": f"Bearer {APP}"}
        assert (await c.get(f"{url}/dify/v1/meta", headers=headers)).json() == {"tool_icons": {}}
        assert (await c.get(f"{url}/dify/v1/info", headers=headers)).json()["name"] == "support"


@pytest.mark.parametrize(
    ("key", "body", "status", "code", "words"),
    [
        ("wrong", {"query": "hi", "user": "u"}, 401, "unauthorized", "Incorrect API key"),
        (APP, {"query": "hi"}, 400, "invalid_param", "user is required"),
        (APP, {"query": "", "user": "u"}, 400, "invalid_param", "query is required"),
        (APP, {"query": "hi", "user": "u", "response_mode": "fast"}, 400, "invalid_param", "response_mode"),
        (APP, {"query": "hi", "user": "u", "files": [{"type": "document"}]}, 400, "invalid_param", "image"),
        (APP, {"query": "hi", "user": "u", "conversation_id": "nope"}, 404, "not_found", "Conversation Not Exists"),
        (BROAD, {"query": "hi", "user": "u"}, 400, "invalid_param", "dify_channel"),
    ],
)
async def test_bad_requests_in_difys_error_shape(rig, key, body, status, code, words):
    up, url = rig
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{url}/dify/v1/chat-messages", json=body, headers={"authorization": f"Bearer {key}"})
    assert r.status_code == status, r.text
    err = r.json()
    assert err["code"] == code and err["status"] == status and words in err["message"], err
    assert up.chat_requests() == []
