"""Optional OpenTelemetry traces: a span per upstream attempt, exported over OTLP/HTTP.

Off by default. `tracing: {otlp_endpoint: "http://collector:4318"}` turns it on; it needs the
`otel` extra (`pip install 'switchboard[otel]'`: the OpenTelemetry SDK and its OTLP/HTTP
exporter), imported only then. Spans follow the OpenTelemetry GenAI semantic conventions: one
CLIENT span per attempt at a provider, named `chat {model}`, with `gen_ai.operation.name`,
`gen_ai.provider.name` (the provider's kind), `gen_ai.request.model`, `gen_ai.response.model`,
`gen_ai.usage.input_tokens` / `output_tokens` when the upstream reported them, `error.type` on
failure, and Switchboard's own `switchboard.channel`, `switchboard.provider` and
`switchboard.request_id`. Spans are batched and exported by the SDK's background thread.

Off, the cost on the request path is one attribute check per attempt.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("switchboard.tracing")

INSTALL = "pip install 'switchboard[otel]'"


class Span:
    """A started attempt span (or nothing, when tracing is off)."""

    __slots__ = ("_span",)

    def __init__(self, span: Any) -> None:
        self._span = span

    def finish(self, *, model: str | None = None, usage: Any = None, error: BaseException | None = None) -> None:
        span = self._span
        if span is None:
            return
        if model:
            span.set_attribute("gen_ai.response.model", model)
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            span.set_attribute("error.type", type(error).__name__)
            span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
        span.end()


NO_SPAN = Span(None)


class Tracing:
    """The tracer (None when off) and the provider that exports its spans."""

    def __init__(self, endpoint: str | None, service_name: str = "switchboard") -> None:
        self.endpoint = endpoint
        self.service_name = service_name
        self.tracer: Any = None
        self._provider: Any = None

    def start(self) -> None:
        if not self.endpoint:
            return
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            log.warning("tracing.otlp_endpoint is set but OpenTelemetry is not installed (%s): no traces", INSTALL)
            return
        provider = TracerProvider(resource=Resource.create({"service.name": self.service_name}))
        exporter = OTLPSpanExporter(endpoint=self.endpoint.rstrip("/") + "/v1/traces", timeout=5)
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
        self._provider = provider
        self.tracer = provider.get_tracer("switchboard")
        log.info("tracing: spans go to %s/v1/traces", self.endpoint.rstrip("/"))

    def attempt(self, kind: str, channel: str, provider: str, model: str | None, request_id: str | None) -> Span:
        """A CLIENT span for one attempt at `provider`; finish it with `Span.finish`."""
        tracer = self.tracer
        if tracer is None:
            return NO_SPAN
        from opentelemetry.trace import SpanKind

        attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": kind,
            "switchboard.channel": channel,
            "switchboard.provider": provider,
        }
        if model:
            attributes["gen_ai.request.model"] = model
        if request_id:
            attributes["switchboard.request_id"] = request_id
        return Span(tracer.start_span(f"chat {model or provider}", kind=SpanKind.CLIENT, attributes=attributes))

    def close(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()  # exports what is batched
            self._provider = None
            self.tracer = None
