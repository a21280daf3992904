"""OpenTelemetry traces (optional): with `tracing.otlp_endpoint` set, each upstream attempt is a
CLIENT span with the GenAI semantic-convention attributes, posted over OTLP/HTTP to a fake
collector on loopback that decodes the protobuf request; a failed attempt carries `error.type`.
Off (the default), nothing is exported."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from proxy.app import create_app
from proxy.config import parse_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import serve_aiohttp, serve_asgi

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

KEY = "sk-trace"
HI = [{"role": "user", "content": "hello"}]


class Collector:
    """`POST /v1/traces` (OTLP/HTTP, protobuf): every span received, as a dict."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []

    async def traces(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        for resource in message.resource_spans:
            service = {a.key: _value(a.value) for a in resource.resource.attributes}.get("service.name")
            for scope in resource.scope_spans:
                for span in scope.spans:
                    attributes = {a.key: _value(a.value) for a in span.attributes}
                    self.spans.append(
                        {
                            "name": span.name,
                            "kind": span.kind,
                            "service": service,
                            "status": span.status.code,
                            **attributes,
                        }
                    )
        return web.Response(body=b"", content_type="application/x-protobuf")


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value"))


async def collector() -> AsyncIterator[tuple[Collector, str]]:
    c = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", c.traces)
    async with serve_aiohttp(app) as url:
        yield c, url


def config(tmp: Path, good: str, bad: str, endpoint: str | None) -> dict[str, Any]:
    return {
        "store": {"url": "memory://"},
        "keys": [{"key": KEY}],
        "tracing": {"otlp_endpoint": endpoint, "service_name": "sb-test"} if endpoint else {},
        "failover": {"attempts": 1},
        "providers": {
            "flaky": {"kind": "openai", "base_url": bad, "api_key": "sk-up", "model": "gpt-a"},
            "main": {"kind": "openai", "base_url": good, "api_key": "sk-up", "model": "gpt-b"},
        },
        "channels": [{"name": "chat", "providers": ["flaky", "main"]}],
    }


async def test_each_attempt_is_a_genai_span(tmp_path: Path):
    async for col, endpoint in collector():
        async with FakeOpenAI(answer="traced answer") as good, FakeOpenAI() as bad:
            bad.fail(500, times=2)
            app = create_app(parse_config(config(tmp_path, good.base_url, bad.base_url, endpoint), {}))
            async with serve_asgi(app) as url:
                client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
                await client.chat.completions.create(model="chat", messages=HI, extra_headers={"X-Request-Id": "t-1"})  # type: ignore[arg-type]
                stream = await client.chat.completions.create(model="chat", messages=HI, stream=True)  # type: ignore[arg-type]
                async for _ in stream:
                    pass
            # shutdown exported what was batched
        for _ in range(100):
            if len(col.spans) >= 4:
                break
            await asyncio.sleep(0.05)
        spans = col.spans
        assert [(s["name"], s["switchboard.provider"]) for s in spans] == [
            ("chat gpt-a", "flaky"),
            ("chat gpt-b", "main"),
            ("chat gpt-a", "flaky"),
            ("chat gpt-b", "main"),
        ]
        failed, ok = spans[0], spans[1]
        assert failed["error.type"] == "ProviderUnavailable" and failed["status"] == 2  # STATUS_CODE_ERROR
        assert ok["gen_ai.operation.name"] == "chat" and ok["gen_ai.provider.name"] == "openai"
        assert ok["gen_ai.request.model"] == "gpt-b" and ok["gen_ai.usage.output_tokens"] == 2
        assert ok["gen_ai.usage.input_tokens"] == 5 and ok["switchboard.channel"] == "chat"
        assert ok["switchboard.request_id"] == "t-1" and ok["service"] == "sb-test" and ok["kind"] == 3  # CLIENT
        assert spans[3]["gen_ai.usage.output_tokens"] == 2  # the stream's usage chunk
        assert all("sk-up" not in str(s) for s in spans)


async def test_off_by_default_nothing_is_exported(tmp_path: Path):
    async for col, _ in collector():
        async with FakeOpenAI(answer="untraced") as good:
            app = create_app(parse_config(config(tmp_path, good.base_url, good.base_url, None), {}))
            async with serve_asgi(app) as url:
                client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
                await client.chat.completions.create(model="chat", messages=HI)  # type: ignore[arg-type]
            assert app.state.engine.tracing.tracer is None
        assert col.spans == []
