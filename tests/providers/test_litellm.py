"""The `litellm` provider against a fake Ollama on loopback (the real LiteLLM SDK in between)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

import aiohttp
import pytest

from providers.litellm import LiteLLMConfig, LiteLLMProvider
from proxy.engine import NO_STATE
from proxy.errors import AuthFailed, Misconfigured, ProviderTimeout, ProviderUnavailable, RequestRejected
from proxy.types import ChatRequest, Message
from tests.fakes.ollama import FakeOllama
from tests.servers import free_port

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map fetch: tests stay offline
pytest.importorskip("litellm")
pytestmark = pytest.mark.filterwarnings("ignore:Item 'summary' on TypedDict:UserWarning")
REQ = ChatRequest((Message("system", "be brief"), Message("user", "hi there")))


@pytest.fixture(scope="module")
def ollama():
    """The fake Ollama runs on its own thread and loop, like the separate process a real one is
    (LiteLLM makes one blocking model-info call that must not wait on the test's own loop)."""
    started, stop = threading.Event(), threading.Event()
    holder: dict = {}

    def run() -> None:
        async def serve() -> None:
            async with FakeOllama() as fake:
                holder["fake"] = fake
                started.set()
                while not stop.is_set():
                    await asyncio.sleep(0.05)

        asyncio.run(serve())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    yield holder["fake"]
    stop.set()
    thread.join(5)


def local_provider(http, base_url: str, **cfg) -> LiteLLMProvider:
    return LiteLLMProvider(
        "local", LiteLLMConfig(kind="litellm", model="ollama_chat/qwen2.5", api_base=base_url, **cfg), http
    )


@pytest.fixture
async def local(ollama):
    async with aiohttp.ClientSession() as http:
        p = local_provider(http, ollama.base_url)
        await p.start()
        ollama.requests.clear()
        ollama.faults.clear()
        yield p, ollama


def test_importing_the_provider_does_not_import_litellm():
    code = "import sys, providers.litellm; print('litellm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_stream(local):
    p, fake = local
    deltas = [d async for d in p.stream(REQ, NO_STATE)]
    assert "".join(d.text for d in deltas) == "local: hi there"
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["stop"]
    sent = fake.requests[0]
    assert sent["model"] == "qwen2.5" and sent["stream"] is True and sent["messages"][0]["role"] == "system"
    assert "litellm" in sys.modules


async def test_complete(local):
    p, fake = local
    c = await p.complete(REQ, NO_STATE)
    assert c.text == "local: hi there" and c.finish_reason == "stop"
    assert c.usage is not None and c.usage.prompt_tokens == 4 and c.usage.completion_tokens == 3
    assert fake.requests[0]["stream"] is False


@pytest.mark.parametrize(
    "status,text,cls",
    [
        (404, "model qwen2.5 not found, try pulling it first", Misconfigured),
        (400, "invalid value for option temperature", RequestRejected),
        (503, "server busy", ProviderUnavailable),
        (500, "model crashed", ProviderUnavailable),
    ],
)
async def test_upstream_errors_map_to_the_tree(local, status, text, cls):
    p, fake = local
    fake.fail_next(status, text)
    with pytest.raises(cls) as e:
        await p.complete(REQ, NO_STATE)
    assert text in e.value.message


async def test_error_line_midway_after_first_delta(local):
    p, fake = local
    fake.error_midway("out of memory")
    got = []
    with pytest.raises(ProviderUnavailable) as e:
        async for d in p.stream(REQ, NO_STATE):
            got.append(d.text)
    assert got == ["local:"] and "out of memory" in e.value.message


async def test_timeout(ollama):
    async with aiohttp.ClientSession() as http:
        p = local_provider(http, ollama.base_url, timeout=0.3)
        await p.start()
        ollama.hang(2)
        with pytest.raises(ProviderTimeout):
            await p.complete(REQ, NO_STATE)


async def test_connection_refused():
    async with aiohttp.ClientSession() as http:
        p = local_provider(http, f"http://127.0.0.1:{free_port()}")
        await p.start()
        with pytest.raises(ProviderUnavailable):
            [d async for d in p.stream(REQ, NO_STATE)]


async def test_key_in_an_error_is_masked(ollama):
    async with aiohttp.ClientSession() as http:
        p = local_provider(http, ollama.base_url, api_key="sk-local-0123456789")
        await p.start()
        ollama.fail_next(401, "unknown key sk-local-0123456789")
        with pytest.raises(AuthFailed) as e:
            await p.complete(REQ, NO_STATE)
        assert "unknown key" in e.value.message and "sk-local-0123456789" not in str(e.value)


async def test_embed_through_litellm():
    """`embed` calls litellm.aembedding: here an OpenAI-compatible embeddings API (the fake
    answers the vectors out of order; `index` puts them back)."""
    from proxy.types import EmbedRequest
    from tests.fakes.openai_upstream import FakeOpenAI

    async with FakeOpenAI() as fake, aiohttp.ClientSession() as http:
        config = LiteLLMConfig(
            kind="litellm", model="openai/gpt", api_base=fake.base_url, api_key="sk-x", embedding_model="openai/emb"
        )
        p = LiteLLMProvider("local", config, http)
        await p.start()
        result = await p.embed(EmbedRequest(("a cat", "the dog sat")))
        assert result.vectors == ((5.0, 0.0, 0.5), (11.0, 1.0, 0.5))
        assert result.usage is not None and result.usage.prompt_tokens == 5
        (sent,) = [r.json for r in fake.requests if r.path.endswith("/embeddings")]
        assert sent["model"] == "emb" and sent["input"] == ["a cat", "the dog sat"]
