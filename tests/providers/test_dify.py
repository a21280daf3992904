"""The `dify` provider against a fake Dify service API on loopback."""

from __future__ import annotations

import aiohttp
import pytest

from providers.dify import DifyConfig, DifyProvider
from proxy.errors import ProviderUnavailable, QuotaExceeded, RateLimited, RequestRejected
from proxy.types import ChatRequest, Message
from tests.fakes.dify import FakeDify


class State:
    def __init__(self) -> None:
        self.value = None

    async def get(self):
        return self.value

    async def set(self, value):
        self.value = value


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def fake():
    async with FakeDify() as f:
        yield f


def dify(http, fake, **cfg) -> DifyProvider:
    return DifyProvider("kb", DifyConfig(kind="dify", base_url=fake.base_url, api_key="app-secret", **cfg), http)


def ask(text: str, earlier: tuple[Message, ...] = ()) -> ChatRequest:
    return ChatRequest((Message("system", "sys"), *earlier, Message("user", text)), user="u1")


async def answer(p, req, state) -> str:
    text = ""
    async for d in p.stream(req, state):
        text = d.text if d.replace else text + d.text
    return text


async def test_conversation_memory_kept_in_state(http, fake):
    p, st = dify(http, fake), State()
    assert await answer(p, ask("hello"), st) == "dify#1: hello"
    cid = st.value["conversation_id"]
    assert await answer(p, ask("again"), st) == "dify#2: again"
    second = fake.requests[1]["json"]
    assert second["conversation_id"] == cid and second["query"] == "again"
    assert second["response_mode"] == "streaming" and second["user"] == "u1" and second["inputs"] == {}
    assert fake.requests[0]["auth"] == "Bearer app-secret"


async def test_conversation_not_exists_resets_and_retries_once(http, fake):
    p, st = dify(http, fake), State()
    st.value = {"conversation_id": "11111111-2222-3333-4444-555555555555"}
    assert await answer(p, ask("hi"), st) == "dify#1: hi"
    assert len(fake.requests) == 2 and "conversation_id" not in fake.requests[1]["json"]
    assert st.value["conversation_id"] != "11111111-2222-3333-4444-555555555555"


async def test_earlier_turns_folded_into_new_conversation(http, fake):
    p = dify(http, fake)
    earlier = (Message("user", "my name is Ada"), Message("assistant", "Hi Ada"))
    await answer(p, ask("what is my name?", earlier), State())
    query = fake.requests[0]["json"]["query"]
    assert "User: my name is Ada" in query and "Assistant: Hi Ada" in query and query.endswith("User: what is my name?")


async def test_agent_messages_not_doubled_by_final_message(http):
    async with FakeDify(agent=True) as fake:
        assert await answer(dify(http, fake, app_mode="agent"), ask("x y"), State()) == "dify#1: x y"


async def test_message_replace(http, fake):
    fake.replace("[content removed]")
    assert await answer(dify(http, fake), ask("bad words"), State()) == "[content removed]"


async def test_usage_from_message_end(http, fake):
    deltas = [d async for d in dify(http, fake).stream(ask("a b"), State())]
    end = [d for d in deltas if d.finish_reason]
    assert end and end[-1].usage.completion_tokens == 3


@pytest.mark.parametrize(
    "status,code,cls",
    [
        (429, "too_many_requests", RateLimited),
        (429, "rate_limit_error", QuotaExceeded),
        (400, "provider_quota_exceeded", QuotaExceeded),
        (400, "invalid_param", RequestRejected),
        (500, "internal_server_error", ProviderUnavailable),
        (400, "completion_request_error", ProviderUnavailable),
    ],
)
async def test_errors_before_stream(http, fake, status, code, cls):
    fake.fail(status, code)
    with pytest.raises(cls):
        await answer(dify(http, fake), ask("x"), State())


async def test_error_event_inside_stream(http, fake):
    fake.error_event()
    with pytest.raises(ProviderUnavailable):
        await answer(dify(http, fake), ask("a b c"), State())


async def test_completion_and_workflow_modes(http, fake):
    assert await answer(dify(http, fake, app_mode="completion"), ask("write"), State()) == "completed: write"
    assert await answer(dify(http, fake, app_mode="workflow", output_key="result"), ask("run"), State()) == "flow: run"
    assert fake.requests[-1]["path"] == "/v1/workflows/run"
