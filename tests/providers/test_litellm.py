"""The `litellm` provider against a fake Ollama on loopback (the real LiteLLM SDK in between)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import aiohttp
import pytest

from providers.litellm import LiteLLMConfig, LiteLLMProvider
from proxy.engine import NO_STATE
from proxy.errors import ProviderError
from proxy.types import ChatRequest, Message
from tests.fakes.ollama import FakeOllama

pytest.importorskip("litellm")
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


@pytest.fixture
async def local(ollama):
    async with aiohttp.ClientSession() as http:
        p = LiteLLMProvider(
            "local", LiteLLMConfig(kind="litellm", model="ollama_chat/qwen2.5", api_base=ollama.base_url), http
        )
        await p.start()
        ollama.requests.clear()
        yield p, ollama


def test_importing_the_provider_does_not_import_litellm():
    code = "import sys, providers.litellm; print('litellm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_stream(local):
    p, fake = local
    text = "".join([d.text async for d in p.stream(REQ, NO_STATE)])
    assert text == "local: hi there"
    assert fake.requests[0]["model"] == "qwen2.5" and fake.requests[0]["messages"][0]["role"] == "system"
    assert "litellm" in sys.modules


async def test_complete(local):
    p, _ = local
    c = await p.complete(REQ, NO_STATE)
    assert c.text == "local: hi there"


async def test_upstream_error_becomes_provider_error(local):
    p, fake = local
    fake.fail_next(500, "model crashed")
    with pytest.raises(ProviderError):
        await p.complete(REQ, NO_STATE)
