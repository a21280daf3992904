"""`Provider.probe()` of every provider against fake upstreams on loopback (`check --live`)."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

import providers.upstream
from providers.dify import DifyConfig, DifyProvider
from providers.echo import EchoConfig, EchoProvider
from providers.litellm import LiteLLMConfig, LiteLLMProvider
from providers.openai import OpenAIConfig, OpenAIProvider
from providers.openai_image import OpenAIImageConfig, OpenAIImageProvider
from proxy.contracts import Provider
from proxy.probe import ProbeOutcome, ProbeResult
from proxy.types import ChatRequest
from tests.fakes.dify import FakeDify
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai_upstream import FakeOpenAI, error_body
from tests.servers import free_port, serve_aiohttp

GOOD, BAD = "sk-good-0000000000001234", "sk-bad-00000000000009876"
REACHABLE, AUTH_FAILED = ProbeOutcome.REACHABLE, ProbeOutcome.AUTH_FAILED


@pytest.fixture
async def fake():
    async with FakeOpenAI() as f:
        yield f


def openai(http, base_url: str, **cfg) -> OpenAIProvider:
    return OpenAIProvider("up", OpenAIConfig(base_url=base_url, **{"model": "gpt-fake", **cfg}), http)


def text(results: list[ProbeResult]) -> list[str]:
    return [f"{r.key} {r}" for r in results]


# -------------------------------------------------------------------------------- openai


async def test_openai_pool_probes_every_key_masked(http, fake):
    fake.key_rejected.add(BAD)
    results = await openai(http, fake.base_url, api_keys=[GOOD, BAD]).probe()
    assert text(results) == [
        "sk-…1234 reachable (model gpt-fake listed)",
        "sk-…9876 auth failed: Incorrect API key provided (HTTP 401)",
    ]
    assert {r.key for r in fake.requests} == {GOOD, BAD}
    assert all(r.path == "/v1/models" for r in fake.requests)
    assert all(GOOD not in str(r) and BAD not in str(r) for r in results)


async def test_openai_probe_leaves_the_pool_alone(http, fake):
    fake.key_rejected.add(BAD)
    p = openai(http, fake.base_url, api_keys=[GOOD, BAD])
    await p.probe()
    assert [k["state"] for k in p.key_status()] == ["ok", "ok"]


async def test_openai_model_not_listed_is_a_warning(http, fake):
    fake.models = ["gpt-4o", "gpt-4o-mini"]
    [r] = await openai(http, fake.base_url, api_key=GOOD, model="gpt-5").probe()
    assert r.outcome is REACHABLE and str(r) == "reachable (warning: model gpt-5 not among the 2 listed)"
    fake.models = []
    [r] = await openai(http, fake.base_url, api_key=GOOD, model="gpt-5").probe()
    assert r.outcome is REACHABLE and "no model list" in r.detail


async def test_openai_keyless_server_sends_no_authorization(http, fake):
    [r] = await openai(http, fake.base_url).probe()
    assert r.key == "-" and r.outcome is REACHABLE
    assert "Authorization" not in fake.requests[0].headers


async def test_openai_dead_port_is_unreachable(http):
    [r] = await openai(http, f"http://127.0.0.1:{free_port()}/v1", api_key=GOOD).probe()
    assert r.outcome is ProbeOutcome.UNREACHABLE and r.detail == "cannot connect: Connection refused"
    assert not r.outcome.usable


async def test_openai_wrong_path_is_misconfigured(http, fake):
    [r] = await openai(http, fake.base_url.removesuffix("/v1"), api_key=GOOD).probe()
    assert r.outcome is ProbeOutcome.MISCONFIGURED and "(HTTP 404)" in r.detail


async def test_openai_quota_rate_limit_and_5xx(http, fake):
    fake.quota()
    [r] = await openai(http, fake.base_url, api_key=GOOD).probe()
    assert r.outcome is ProbeOutcome.QUOTA and not r.outcome.usable
    fake.key_rate_limited.add(GOOD)
    [r] = await openai(http, fake.base_url, api_key=GOOD).probe()
    assert str(r) == "reachable (rate limited now: HTTP 429, retry after 60 s)"
    fake.key_rate_limited.clear()
    fake.html(502)
    [r] = await openai(http, fake.base_url, api_key=GOOD).probe()
    assert r.outcome is ProbeOutcome.UNREACHABLE and "(HTTP 502)" in r.detail


async def test_openai_echoed_key_is_scrubbed(http, fake):
    fake.fail(401, error_body(f"Incorrect API key provided: {GOOD}.", "invalid_request_error", "invalid_api_key"))
    [r] = await openai(http, fake.base_url, api_key=GOOD).probe()
    assert r.outcome is AUTH_FAILED and GOOD not in str(r) and "sk-…1234" in str(r)


async def test_openai_hang_times_out(http, fake, monkeypatch):
    monkeypatch.setattr(providers.upstream, "PROBE_TIMEOUT", aiohttp.ClientTimeout(total=0.3))
    fake.hang(3)
    [r] = await openai(http, fake.base_url, api_key=GOOD).probe()
    assert r.outcome is ProbeOutcome.TIMED_OUT


async def test_openai_html_page_is_misconfigured(http):
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html>welcome</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/models", page)
    async with serve_aiohttp(app) as url:
        [r] = await openai(http, url, api_key=GOOD).probe()
    assert r.outcome is ProbeOutcome.MISCONFIGURED and "text/html" in r.detail


async def test_openai_image_probes_models(http, fake):
    fake.models = ["dall-e-3"]
    p = OpenAIImageProvider("img", OpenAIImageConfig(base_url=fake.base_url, api_key=GOOD), http)
    assert text(await p.probe()) == ["sk-…1234 reachable (model dall-e-3 listed)"]


# ---------------------------------------------------------------------------------- dify


def dify(http, base_url: str, key: str = "app-secret-key-5678", **cfg) -> DifyProvider:
    return DifyProvider("kb", DifyConfig(base_url=base_url, api_key=key, **cfg), http)


async def test_dify_app_reachable_with_its_mode(http):
    async with FakeDify(api_key="app-secret-key-5678") as fake:
        assert text(await dify(http, fake.base_url).probe()) == ["app…5678 reachable (app 'Fake KB', mode chat)"]
        assert fake.probes == [("/v1/info", "Bearer app-secret-key-5678")]
        [r] = await dify(http, fake.base_url, key="app-wrong-key-0000").probe()
        assert str(r) == "auth failed: Access token is invalid (HTTP 401)" and r.key == "app…0000"


async def test_dify_mode_that_does_not_fit_is_misconfigured(http):
    async with FakeDify(mode="workflow") as fake:
        [r] = await dify(http, fake.base_url).probe()
        assert r.outcome is ProbeOutcome.MISCONFIGURED and "workflow app; app_mode chat" in r.detail
        [r] = await dify(http, fake.base_url, app_mode="workflow").probe()
        assert r.outcome is REACHABLE
    async with FakeDify(mode="advanced-chat") as fake:  # a chatflow takes /chat-messages
        [r] = await dify(http, fake.base_url, app_mode="agent").probe()
        assert r.outcome is REACHABLE


async def test_dify_without_info_falls_back_to_parameters(http):
    async with FakeDify(api_key="app-secret-key-5678") as fake:
        fake.info = False
        [r] = await dify(http, fake.base_url).probe()
        assert r.outcome is REACHABLE and "mode is unchecked" in r.detail
        assert fake.probes == [("/v1/parameters", "Bearer app-secret-key-5678")]
        [r] = await dify(http, fake.base_url.removesuffix("/v1")).probe()  # neither: wrong base_url
        assert r.outcome is ProbeOutcome.MISCONFIGURED and "(HTTP 404)" in r.detail


# ------------------------------------------------------------------------------- litellm


def litellm(http, **cfg) -> LiteLLMProvider:
    return LiteLLMProvider("local", LiteLLMConfig(**cfg), http)  # probe() needs no start()


async def test_litellm_ollama_model_pulled_or_not(http):
    async with FakeOllama() as fake:
        for model in ("ollama_chat/qwen2.5", "ollama/qwen2.5:latest"):
            [r] = await litellm(http, model=model, api_base=fake.base_url).probe()
            assert r.outcome is REACHABLE and r.key == "-" and "pulled" in r.detail
        [r] = await litellm(http, model="ollama_chat/llama3", api_base=fake.base_url).probe()
        assert str(r) == "misconfigured: model llama3 not pulled (ollama pull llama3); has: qwen2.5:latest"
        [r] = await litellm(http, model="ollama_chat/qwen2.5", api_base=f"http://127.0.0.1:{free_port()}").probe()
        assert r.outcome is ProbeOutcome.UNREACHABLE


async def test_litellm_openai_compatible_base_lists_models(http, fake):
    fake.models = ["Qwen/Qwen2.5-7B"]
    [r] = await litellm(http, model="hosted_vllm/Qwen/Qwen2.5-7B", api_base=fake.base_url, api_key=GOOD).probe()
    assert str(r) == "reachable (model Qwen/Qwen2.5-7B listed)" and r.key == "sk-…1234"
    assert fake.requests[0].key == GOOD
    fake.key_rejected.add(BAD)
    [r] = await litellm(http, model="hosted_vllm/x", api_base=fake.base_url, api_key=BAD).probe()
    assert r.outcome is AUTH_FAILED and BAD not in str(r)


async def test_litellm_without_api_base_calls_nothing(http):
    [r] = await litellm(http, model="gpt-4o-mini", api_key=GOOD).probe()
    assert r.outcome is ProbeOutcome.NOT_PROBED and "no api_base" in r.detail and r.outcome.usable


# ------------------------------------------------------------------------ echo, default


async def test_echo_has_no_network(http):
    [r] = await EchoProvider("echo", EchoConfig(), http).probe()
    assert str(r) == "not probed: no network" and r.key == "-"


async def test_default_probe_says_there_is_none(http):
    class Quiet(Provider):
        config_model = EchoConfig

        async def stream(self, request: ChatRequest, state):  # pragma: no cover - never called
            yield

    [r] = await Quiet("q", EchoConfig(), http).probe()
    assert r.outcome is ProbeOutcome.NOT_PROBED and r.outcome.usable and "has no probe" in r.detail
