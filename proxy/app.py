"""The composition root: builds the Starlette app from validated Settings.

Adapters are found by `kind` through the entry-point registries (proxy/registry.py); the app
owns the engine (HTTP client, store, providers, failover), the dispatcher for platform messages
and the background runner, and drains in-flight replies on shutdown.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.config import Settings
from proxy.contracts import Platform
from proxy.dispatch import Dispatcher
from proxy.engine import Engine
from proxy.errors import RequestError, VerificationError
from proxy.health import readiness
from proxy.http_util import CLIENT_CLOSED, ClientGone, read_body
from proxy.metrics import Metrics
from proxy.openai_api import OpenAIFrontDoor, error_response
from proxy.recovery import Recovery
from proxy.refusals import Refusals
from proxy.runner import Runner
from proxy.types import WebRequest

log = logging.getLogger("switchboard")
#: On a 408 the rest of a slow body is not worth reading: the connection closes after the answer.
CLOSE = {"connection": "close"}


class Hooks:
    """`/hooks/{name}`: hand the raw request to the platform adapter of that name."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.platforms: dict[str, Platform] = {}

    async def start(self, dispatcher: Dispatcher) -> None:
        for name, a in self.settings.platforms.items():
            if a.disabled is None and a.cls is not None:
                platform = a.cls(name, a.config, dispatcher.context(name))
                try:
                    await platform.start()
                except Exception:
                    log.exception("platform %s (%s) failed to start; it stays enabled", name, a.kind)
                self.platforms[name] = platform
                log.info("platform %s (%s) listening at /hooks/%s", name, a.kind, name)

    async def close(self) -> None:
        for p in self.platforms.values():
            try:
                await p.close()
            except Exception:
                log.exception("closing platform %s failed", p.name)

    async def handle(self, request: Request) -> Response:
        name = request.path_params["name"]
        platform = self.platforms.get(name)
        if platform is None:
            adapter = self.settings.platforms.get(name)
            why = f"platform {name!r} is disabled: {adapter.disabled}" if adapter else f"no platform named {name!r}"
            return Response(why, 404 if adapter is None else 503)
        status = 500
        try:
            server = self.settings.raw.server
            declared = request.headers.get("content-length")
            body = await read_body(request.receive, server.max_body_bytes, declared, server.body_timeout)
            req = WebRequest(
                request.method,
                request.url.path,
                {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.scope["headers"]},
                dict(request.query_params),
                body,
                request.client.host if request.client else None,
            )
            out = await platform.handle(req)
            status = out.status
            return Response(out.body, out.status, headers=dict(out.headers), media_type=out.content_type)
        except VerificationError as e:
            status = e.status
            log.warning("platform %s: request refused: %s", name, e.reason)
            return Response("unauthorized", e.status)
        except RequestError as e:
            status = e.status
            return Response(e.message, e.status, headers=CLOSE if e.status == 408 else None)
        except ClientGone:  # the client's own doing: no traceback, no 500
            status = CLIENT_CLOSED
            log.debug("platform %s: the client left before its request body arrived", name)
            return Response(b"", CLIENT_CLOSED)
        except Exception:
            log.exception("platform %s: handling a request failed", name)
            return Response("internal error", 500)
        finally:
            self.metrics.hooks.labels(name, str(status)).inc()


HOT_PATH = "/v1/chat/completions"
#: The reason a refused `/v1/...` request that matched no route is counted under.
ROUTE_REASONS = {404: "no_such_route", 405: "method_not_allowed"}


class SwitchboardApp(Starlette):
    """Starlette, with the hot path (`POST /v1/chat/completions`) handed straight to its ASGI
    app before the middleware stack and the router; it handles its own errors. Everything else,
    including other methods on that path (405), goes through Starlette."""

    def __init__(self, hot: ASGIApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hot = hot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == HOT_PATH:
            await self.hot(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings, *, on_ready: Callable[[], None] | None = None) -> Starlette:
    """The app. `on_ready` runs once start-up (engine, store, platforms) has finished."""
    metrics = Metrics()
    engine = Engine(settings, observe=metrics.observe_attempt, limited=metrics.count_limited)
    runner = Runner(settings.raw.server.max_concurrent_generations)
    dispatcher = Dispatcher(engine, runner, settings)
    refusals = Refusals(metrics)
    front = OpenAIFrontDoor(engine, settings, refusals)
    hooks = Hooks(settings, metrics)
    recovery = Recovery(dispatcher, hooks.platforms, settings.raw.server)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await engine.start()
        await hooks.start(dispatcher)
        await recovery.start()
        log.info(
            "switchboard ready: %d channel(s), %d provider(s), %d platform(s)",
            len(settings.channels),
            len(engine.providers),
            len(hooks.platforms),
        )
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            recovery.stop()
            cut = await runner.drain(settings.raw.server.drain_seconds)
            if cut:
                log.warning(
                    "shutdown: %d in-flight repl%s cut off; the next start answers them (claims left to run out)",
                    cut,
                    "y" if cut == 1 else "ies",
                )
            await hooks.close()
            await engine.close()

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def readyz(request: Request) -> Response:
        status, body = await readiness(settings, engine)
        return Response(orjson.dumps(body), status, media_type="application/json")

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if request.url.path.startswith("/v1/"):
            refusals(exc.status_code, ROUTE_REASONS.get(exc.status_code, "http_error"), None)
            return error_response(
                exc.status_code,
                f"{request.method} {request.url.path}: {exc.detail}",
                "invalid_request_error",
                code="not_found" if exc.status_code == 404 else None,
                headers=exc.headers,
            )
        return Response(str(exc.detail), exc.status_code, headers=exc.headers)

    routes = [
        Route(HOT_PATH, front, methods=["POST"]),
        Route("/v1/models", front.models, methods=["GET"]),
        Route("/v1/models/{model:path}", front.model, methods=["GET"]),
        Route("/hooks/{name}", hooks.handle, methods=["GET", "POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    app = SwitchboardApp(front, routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.engine, app.state.hooks, app.state.runner = engine, hooks, runner
    app.state.refusals = refusals
    return app
