"""`echo`: a deterministic provider for the demo channel and tests. No network, no secrets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Literal

from pydantic import Field

from proxy.contracts import AdapterConfig, Provider, ProviderState
from proxy.probe import ProbeOutcome, ProbeResult
from proxy.types import ChatRequest, Delta, Usage


class EchoConfig(AdapterConfig):
    kind: Literal["echo"] = "echo"
    """`echo`: answers with the user's own text; for tests and demos, no backend."""
    prefix: str = "echo: "
    """Text put before the echoed message."""
    delay: float = Field(0.0, ge=0, le=10)
    """Seconds between streamed words (for demos of streaming); 0 streams at once."""
    model: str = "echo"
    """Model name reported in answers."""


class EchoProvider(Provider):
    config_model = EchoConfig

    async def probe(self) -> list[ProbeResult]:
        return [ProbeResult("-", ProbeOutcome.NOT_PROBED, "no network")]

    def _answer(self, request: ChatRequest) -> str:
        last = next((m for m in reversed(request.messages) if m.role == "user"), None)
        return self.config.prefix + (last.text() if last else "")

    async def stream(self, request: ChatRequest, state: ProviderState) -> AsyncIterator[Delta]:
        text = self._answer(request)
        words = text.split(" ")
        for i, word in enumerate(words):
            if self.config.delay and i:
                await asyncio.sleep(self.config.delay)
            yield Delta(text=word if i == 0 else " " + word)
        n_in = sum(len(m.text().split()) for m in request.messages)
        yield Delta(finish_reason="stop", usage=Usage(n_in, len(words), n_in + len(words)))
