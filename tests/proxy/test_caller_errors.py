"""A caller's bad request is the caller's: through the front door (official `openai` SDK) and a
chat platform (Synology), against real fake upstreams of each provider kind — OpenAI-compatible,
Dify and LiteLLM (Ollama). The upstream's verdict goes back to the caller; no retry, no failover,
no circuit, no key health touched. The provider's own failures still fail over."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from proxy.app import create_app
from proxy.config import parse_config
from tests.fakes.dify import FakeDify
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai_upstream import FakeOpenAI, error_body
from tests.platforms.synology.synology_kit import BOT_TOKEN, FakeNAS, form
from tests.servers import serve_asgi

KEYS = ("sk-caller-one", "sk-caller-two")
POOL = ("sk-upstream-pool-key-aaaa", "sk-upstream-pool-key-bbbb")


class Rig:
    def __init__(self, url: str, gpt: FakeOpenAI, backup: FakeOpenAI, kb: FakeDify, ollama: FakeOllama, nas: FakeNAS):
        self.url, self.gpt, self.backup, self.kb, self.ollama, self.nas = url, gpt, backup, kb, ollama, nas

    def client(self, key: str = KEYS[0]) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)

    async def ask(self, channel: str, text: str = "hello", key: str = KEYS[0], **extra: Any) -> Any:
        return await self.client(key).chat.completions.create(
            model=channel, messages=[{"role": "user", "content": text}], **extra
        )


@pytest.fixture
async def rig(tmp_path):
    async with (
        FakeOpenAI(context_limit=3000) as gpt,
        FakeOpenAI(answer="backup answer") as backup,
        FakeDify() as kb,
        FakeOllama() as ollama,
        FakeNAS() as nas,
    ):
        settings = parse_config(
            {
                "store": {"url": f"sqlite:///{tmp_path}/s.db"},
                "keys": [{"key": k} for k in KEYS],
                "failover": {"attempts": 2, "backoff_base": 0.001, "backoff_max": 0.002, "circuit_failures": 3},
                "providers": {
                    "gpt": {"kind": "openai", "base_url": gpt.base_url, "api_keys": list(POOL)},
                    "backup": {"kind": "openai", "base_url": backup.base_url, "api_key": "sk-backup-key-123"},
                    "kb": {"kind": "dify", "base_url": kb.base_url, "api_key": "app-dify-secret-key"},
                    "local": {"kind": "litellm", "model": "ollama_chat/qwen2.5", "api_base": ollama.base_url},
                },
                "platforms": {
                    "nas": {"kind": "synology", "tokens": [BOT_TOKEN], "api_base": nas.base, "bot_token": BOT_TOKEN}
                },
                "channels": [
                    {"name": "nas-kb", "match": {"platform": "nas", "prefix": "kb:"}, "providers": ["kb", "backup"]},
                    {
                        "name": "nas-local",
                        "match": {"platform": "nas", "prefix": "local:"},
                        "providers": ["local", "backup"],
                    },
                    {"name": "chat", "match": {"platform": "nas"}, "providers": ["gpt", "backup"], "history": 50},
                    {"name": "gpt", "providers": ["gpt", "backup"]},
                    {"name": "kb", "providers": ["kb", "backup"]},
                    {"name": "local", "providers": ["local", "backup"]},
                ],
            },
            {},
        )
        async with serve_asgi(create_app(settings)) as url:
            yield Rig(url, gpt, backup, kb, ollama, nas)


# ------------------------------------------------------------------------------ front door


@pytest.mark.parametrize("stream", [False, True])
async def test_bad_temperature_gets_the_upstreams_400_and_locks_no_one_out(rig, stream):
    """The reported bug: three `temperature: "hot"` requests opened the circuit for everybody."""
    for _ in range(5):  # more than circuit_failures
        with pytest.raises(openai.BadRequestError) as e:
            await rig.ask("gpt", temperature="hot", stream=stream)
        assert e.value.status_code == 400
        error = e.value.body
        assert error["code"] == "invalid_type" and error["param"] == "temperature"
        assert "Invalid type for 'temperature'" in error["message"] and error["type"] == "invalid_request_error"
    assert len(rig.gpt.chat_requests()) == 5  # one each: no retry
    assert rig.backup.chat_requests() == []  # and never sent on down the chain
    for key in KEYS:  # any key, both of the pool's keys still healthy
        for _ in range(2):
            r = await rig.client(key).chat.completions.with_raw_response.create(
                model="gpt", messages=[{"role": "user", "content": "fine"}]
            )
            assert r.headers["x-switchboard-provider"] == "gpt"
            assert r.parse().choices[0].message.content == "upstream: fine"
    assert {r.key for r in rig.gpt.chat_requests()[5:]} == set(POOL)


@pytest.mark.parametrize(
    "status,code,param,sdk_error",
    [
        (400, "invalid_value", "top_p", openai.BadRequestError),
        (400, "context_length_exceeded", "messages", openai.BadRequestError),
        (413, None, None, openai.APIStatusError),
        (422, None, None, openai.UnprocessableEntityError),
    ],
)
async def test_each_caller_status_comes_back_as_it_was(rig, status, code, param, sdk_error):
    body = {
        "error": {"message": f"upstream says {status}", "type": "invalid_request_error", "param": param, "code": code}
    }
    rig.gpt.fail(status, body, times=4)
    for _ in range(4):
        with pytest.raises(sdk_error) as e:
            await rig.ask("gpt")
        assert e.value.status_code == status
        assert e.value.body == {
            "message": f"The backend rejected the request: upstream says {status}",
            "type": "invalid_request_error",
            "param": param,
            "code": code or "upstream_rejected",
        }
    assert rig.backup.chat_requests() == [] and len(rig.gpt.chat_requests()) == 4
    assert (await rig.ask("gpt")).choices[0].message.content == "upstream: hello"  # circuit closed


async def test_our_key_echoed_in_a_rejection_is_masked(rig):
    echoed = f"Incorrect value; request made with key {POOL[0]} and {POOL[1]}"
    rig.gpt.fail(400, error_body(echoed, "invalid_request_error", None), times=2)
    for _ in range(2):
        with pytest.raises(openai.BadRequestError) as e:
            await rig.ask("gpt")
        message = e.value.body["message"]
        assert POOL[0] not in message and POOL[1] not in message
        assert "sk-…aaaa" in message and "sk-…bbbb" in message


@pytest.mark.parametrize(
    "status,body,upstream_calls",
    [
        (500, None, 2),  # retried once, then the next provider
        (503, None, 2),
        (408, None, 2),
        (409, None, 2),
        (401, error_body("Incorrect API key provided", "invalid_request_error", "invalid_api_key"), 1),
        (403, None, 1),
        (404, error_body("The model `gpt-x` does not exist", "invalid_request_error", "model_not_found"), 1),
        (429, error_body("You exceeded your current quota.", "insufficient_quota", "insufficient_quota"), 1),
    ],
)
async def test_provider_failures_still_fail_over(rig, status, body, upstream_calls):
    rig.gpt.fail(status, body, times=upstream_calls)
    r = await rig.ask("gpt")
    assert r.choices[0].message.content == "backup answer"
    assert len(rig.gpt.chat_requests()) == upstream_calls


async def test_a_404_model_fails_over_but_opens_no_circuit(rig):
    missing = error_body("The model `gpt-x` does not exist", "invalid_request_error", "model_not_found")
    rig.gpt.fail(404, missing, times=5)
    for _ in range(5):
        assert (await rig.ask("gpt")).choices[0].message.content == "backup answer"
    assert len(rig.gpt.chat_requests()) == 5  # tried every time: no circuit opened
    assert (await rig.ask("gpt")).choices[0].message.content == "upstream: hello"


async def test_a_provider_failure_still_opens_the_circuit(rig):
    rig.gpt.fail(500, times=6)
    for _ in range(3):
        assert (await rig.ask("gpt")).choices[0].message.content == "backup answer"
    assert len(rig.gpt.chat_requests()) == 6
    assert (await rig.ask("gpt")).choices[0].message.content == "backup answer"
    assert len(rig.gpt.chat_requests()) == 6  # skipped: its circuit is open


# ------------------------------------------------------------------------------------ Dify


@pytest.mark.parametrize("stream", [False, True])
async def test_dify_invalid_param_is_the_callers(rig, stream):
    for _ in range(4):
        rig.kb.fail(400, "invalid_param", "query is too long")
        with pytest.raises(openai.BadRequestError) as e:
            await rig.ask("kb", stream=stream)
        assert e.value.body["message"] == "The backend rejected the request: query is too long"
        assert e.value.body["code"] == "invalid_param"
    assert rig.backup.chat_requests() == [] and len(rig.kb.requests) == 4


async def test_dify_error_event_for_the_request_is_the_callers(rig):
    rig.kb.error_event("invalid_param", 400)
    with pytest.raises(openai.BadRequestError):
        await rig.ask("kb")
    assert rig.backup.chat_requests() == []


@pytest.mark.parametrize(
    "status,code,dify_calls",
    [
        (400, "provider_quota_exceeded", 1),  # quota: not retried
        (429, "rate_limit_error", 1),  # Dify Cloud's plan limit: quota, not retried
        (429, "too_many_requests", 2),  # a busy app: retried
        (400, "completion_request_error", 2),  # the model behind Dify failed
        (400, "not_chat_app", 1),  # our app_mode does not fit the app
        (404, "not_found", 1),
        (500, "internal_server_error", 2),
    ],
)
async def test_dify_provider_failures_fail_over(rig, status, code, dify_calls):
    for _ in range(dify_calls):
        rig.kb.fail(status, code, "nope")
    assert (await rig.ask("kb")).choices[0].message.content == "backup answer"
    assert len(rig.kb.requests) == dify_calls


# --------------------------------------------------------------------------------- LiteLLM


async def test_litellm_bad_request_is_the_callers(rig):
    for _ in range(4):
        rig.ollama.fail_next(400, "invalid option temperature")
        with pytest.raises(openai.BadRequestError) as e:
            await rig.ask("local")
        assert "invalid option temperature" in e.value.body["message"]
    assert rig.backup.chat_requests() == [] and len(rig.ollama.requests) == 4
    assert (await rig.ask("local")).choices[0].message.content == "local: hello"


async def test_litellm_missing_model_fails_over(rig):
    rig.ollama.fail_next(404, "model qwen2.5 not found, try pulling it first")
    assert (await rig.ask("local")).choices[0].message.content == "backup answer"
    assert len(rig.ollama.requests) == 1


# ------------------------------------------------------------------------------ a platform


async def say(rig: Rig, c: httpx.AsyncClient, post_id: int, text: str) -> str:
    """A Synology bot DM; the text the bot sent back."""
    before = len(rig.nas.sent)
    r = await c.post(
        f"{rig.url}/hooks/nas",
        content=form("bot_dm", post_id=str(post_id), text=text),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200
    for _ in range(500):
        if len(rig.nas.sent) > before:
            break
        await asyncio.sleep(0.01)
    return str(rig.nas.sent[before]["payload"]["text"])


async def test_platform_user_hears_why_and_the_channel_stays_up(rig):
    async with httpx.AsyncClient() as c:
        rig.gpt.fail(
            400,
            error_body("Unsupported value: 'messages' contains an unsupported part", "invalid_request_error", None),
            times=4,
        )
        for n in range(4):
            answer = await say(rig, c, 100 + n, f"question {n}")
            assert (
                answer
                == "Sorry, the assistant could not take this message: Unsupported value: 'messages' contains an unsupported part"
            )
        assert rig.backup.chat_requests() == []
        assert await say(rig, c, 200, "now a fine one") == "upstream: now a fine one"


async def test_platform_context_too_long_says_clear(rig):
    async with httpx.AsyncClient() as c:
        for n in range(4):  # the history grows past the fake model's 3,000 characters
            assert (await say(rig, c, 300 + n, "x" * 400)).startswith("upstream: ")
        for n in range(4):
            answer = await say(rig, c, 400 + n, "x" * 400)
            assert answer == "Sorry, our conversation has grown too long for the assistant. Send /clear to start fresh."
        assert rig.backup.chat_requests() == []
        assert (await say(rig, c, 500, "/clear")).startswith("Done")
        assert await say(rig, c, 501, "short") == "upstream: short"


@pytest.mark.parametrize("kind", ["dify", "litellm"])
async def test_platform_path_for_dify_and_litellm(rig, kind):
    prefix, expected = ("kb:", "query is too long") if kind == "dify" else ("local:", "invalid option top_k")
    async with httpx.AsyncClient() as c:
        for n in range(4):
            if kind == "dify":
                rig.kb.fail(400, "invalid_param", "query is too long")
            else:
                rig.ollama.fail_next(400, "invalid option top_k")
            answer = await say(rig, c, 600 + n, f"{prefix} question {n}")
            assert answer.startswith("Sorry, the assistant could not take this message: ") and expected in answer
        assert rig.backup.chat_requests() == []
        answer = await say(rig, c, 700, f"{prefix} fine")
        assert answer != "backup answer" and "fine" in answer  # the primary answered: no circuit opened
