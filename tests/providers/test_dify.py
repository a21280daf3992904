"""The `dify` provider against a fake Dify service API on loopback."""

from __future__ import annotations

import pytest

from providers.dify import DifyConfig, DifyProvider
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
from tests.fakes.dify import FakeDify
from tests.providers.memstate import MemoryState as State
from tests.servers import free_port


@pytest.fixture
async def fake():
    async with FakeDify() as f:
        yield f


def dify(http, fake, **cfg) -> DifyProvider:
    return DifyProvider("kb", DifyConfig(kind="dify", base_url=fake.base_url, api_key="app-secret", **cfg), http)


def ask(text: str, earlier: tuple[Message, ...] = (), user: str = "u1") -> ChatRequest:
    return ChatRequest((Message("system", "sys"), *earlier, Message("user", text)), user=user)


async def answer(p, req, state) -> str:
    text = ""
    async for d in p.stream(req, state):
        text = d.text if d.replace else text + d.text
    return text


async def test_conversation_memory_kept_in_state(http, fake):
    p, st = dify(http, fake), State()
    assert await answer(p, ask("hello"), st) == "dify#1: hello"  # the fake pings before and between chunks
    cid = st.value["conversation_id"]
    assert await answer(p, ask("again", (Message("user", "hello"), Message("assistant", "dify#1: hello"))), st) == (
        "dify#2: again"
    )
    second = fake.requests[1]["json"]
    assert second["conversation_id"] == cid and second["query"] == "again"  # Dify has the history
    assert second["response_mode"] == "streaming" and second["user"] == "u1" and second["inputs"] == {}
    assert fake.requests[0]["auth"] == "Bearer app-secret"
    assert st.writes == [{"conversation_id": cid, "user": "u1"}]  # saved once, from the first event


async def test_shared_session_keeps_the_conversation_of_its_first_user(http, fake):
    p, st = dify(http, fake), State()
    await answer(p, ask("hi from ann", user="slack:ann"), st)
    assert await answer(p, ask("hi from bob", user="slack:bob"), st) == "dify#2: hi from bob"
    assert [r["json"]["user"] for r in fake.requests] == ["slack:ann", "slack:ann"]


async def test_conversation_not_exists_resets_and_retries_once(http, fake):
    p = dify(http, fake)
    st = State({"conversation_id": "11111111-2222-3333-4444-555555555555", "user": "u1"})
    earlier = (Message("user", "my name is Ada"), Message("assistant", "Hi Ada"))
    assert (await answer(p, ask("hi", earlier), st)).startswith("dify#1: Conversation so far:")
    assert len(fake.requests) == 2 and "conversation_id" not in fake.requests[1]["json"]
    assert "User: my name is Ada" in fake.requests[1]["json"]["query"]  # our transcript, folded in
    assert st.value["conversation_id"] != "11111111-2222-3333-4444-555555555555"


async def test_earlier_turns_folded_into_new_conversation(http, fake):
    p = dify(http, fake, fold_turns=2)
    earlier = (
        Message("user", "first question"),
        Message("assistant", "first answer"),
        Message("user", "my name is Ada"),
        Message("assistant", "Hi Ada"),
    )
    await answer(p, ask("what is my name?", earlier), State())
    query = fake.requests[0]["json"]["query"]
    assert query == "Conversation so far:\nUser: my name is Ada\nAssistant: Hi Ada\n\nUser: what is my name?"


async def test_agent_messages_not_doubled_by_final_message(http):
    async with FakeDify(agent=True) as fake:
        assert await answer(dify(http, fake, app_mode="agent"), ask("x y"), State()) == "dify#1: x y"
        assert fake.requests[0]["path"] == "/v1/chat-messages"


async def test_message_replace(http, fake):
    fake.replace("[content removed]")
    deltas = [d async for d in dify(http, fake).stream(ask("bad words"), State())]
    assert [(d.text, d.replace) for d in deltas if d.text] == [("dify#1:", False), ("[content removed]", True)]


async def test_message_file_image_becomes_delta_images(http, fake):
    fake.image("/files/tools/cat.png?sign=1")
    deltas = [d async for d in dify(http, fake).stream(ask("draw a cat"), State())]
    images = [i for d in deltas for i in d.images]
    assert images == [fake.base_url.removesuffix("/v1") + "/files/tools/cat.png?sign=1"]


async def test_usage_from_message_end(http, fake):
    deltas = [d async for d in dify(http, fake).stream(ask("a b"), State())]
    end = [d for d in deltas if d.finish_reason]
    assert len(end) == 1 and end[0].usage.completion_tokens == 3 and end[0].usage.total_tokens == 6


@pytest.mark.parametrize(
    "status,code,cls",
    [
        (429, "too_many_requests", RateLimited),
        (429, "rate_limit_error", QuotaExceeded),
        (400, "provider_quota_exceeded", QuotaExceeded),
        (400, "invalid_param", RequestRejected),
        (401, "unauthorized", AuthFailed),
        (403, "forbidden", AuthFailed),
        (500, "internal_server_error", ProviderUnavailable),
        (400, "completion_request_error", ProviderUnavailable),
    ],
)
async def test_errors_before_stream(http, fake, status, code, cls):
    fake.fail(status, code, message=f"{code} happened")
    with pytest.raises(cls) as e:
        await answer(dify(http, fake), ask("x"), State())
    assert e.value.message == f"{code} happened" and type(e.value) is cls


async def test_html_from_the_edge_is_bad_response(http, fake):
    fake.html(502)
    with pytest.raises(BadResponse) as e:
        await answer(dify(http, fake), ask("x"), State())
    assert e.value.status == 502 and "<" not in e.value.message


async def test_error_event_inside_stream_after_first_delta(http, fake):
    fake.error_event()
    st, got = State(), []
    with pytest.raises(ProviderUnavailable) as e:
        async for d in dify(http, fake).stream(ask("a b c"), st):
            got.append(d.text)
    assert got == ["dify#1:"] and e.value.message == "model failed"
    assert st.value["conversation_id"]  # saved from the first event, before the failure
    fake.error_event("invalid_param")
    with pytest.raises(RequestRejected):
        await answer(dify(http, fake), ask("a b c"), State())


async def test_timeout_and_connection_refused(http, fake):
    fake.hang(2)
    slow = DifyProvider("kb", dify(http, fake).config.model_copy(update={"read_timeout": 0.3}), http)
    with pytest.raises(ProviderTimeout):
        await answer(slow, ask("x"), State())
    gone = DifyProvider("kb", DifyConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="k"), http)
    with pytest.raises(ProviderUnavailable):
        await answer(gone, ask("x"), State())


async def test_leaving_a_stream_early_stops_the_dify_task(http, fake):
    p = dify(http, fake)
    stream = p.stream(ask("tell me a long story"), State())
    assert (await anext(stream)).text == "dify#1:"
    await stream.aclose()
    await p.close()  # waits for the background stop call
    assert len(fake.stops) == 1
    path, user = fake.stops[0]
    assert path.startswith("/v1/chat-messages/task-") and path.endswith("/stop") and user == "u1"
    await answer(p, ask("short"), State())
    await p.close()
    assert len(fake.stops) == 1  # a finished answer needs no stop


async def test_completion_mode(http, fake):
    assert await answer(dify(http, fake, app_mode="completion"), ask("write"), State()) == "completed: write"
    sent = fake.requests[-1]
    assert sent["path"] == "/v1/completion-messages" and sent["json"]["inputs"] == {"query": "write"}


async def test_workflow_mode_streams_text_chunks(http):
    async with FakeDify(node_output_bytes=2**20) as fake:  # a 1 MB node event on one line, too
        p = dify(http, fake, app_mode="workflow", output_key="result", inputs={"lang": "en"})
        deltas = [d async for d in p.stream(ask("run"), State())]
        assert [d.text for d in deltas if d.text] == ["flow: ", "run"] and deltas[-1].finish_reason == "stop"
        sent = fake.requests[-1]
        assert sent["path"] == "/v1/workflows/run" and sent["json"]["inputs"] == {"lang": "en", "query": "run"}


async def test_workflow_mode_answer_from_outputs(http):
    async with FakeDify(workflow_chunks=False) as fake:
        assert await answer(dify(http, fake, app_mode="workflow", output_key="result"), ask("run"), State()) == (
            "flow: run"
        )
        with pytest.raises(BadResponse) as e:
            await answer(dify(http, fake, app_mode="workflow"), ask("run"), State())
        assert "'answer' missing (has: result)" in e.value.message
        fake.workflow_fails()
        with pytest.raises(ProviderUnavailable) as e:
            await answer(dify(http, fake, app_mode="workflow", output_key="result"), ask("run"), State())
        assert e.value.message == "workflow failed: node LLM failed"


def test_read_timeout_must_outlast_dify_pings():
    with pytest.raises(ValueError):
        DifyConfig(api_key="k", read_timeout=5)
