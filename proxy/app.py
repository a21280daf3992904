"""The composition root: builds the Starlette app from validated Settings.

Adapters are found by `kind` through the entry-point registries (proxy/registry.py); the app
owns the engine (HTTP client, store, providers, failover), the dispatcher for platform messages
and the background runner, and drains in-flight replies on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.admin import Admin
from proxy.chat_admin import ChatAdmin
from proxy.config import Settings
from proxy.connections import Connections
from proxy.contracts import Platform
from proxy.dispatch import Dispatcher
from proxy.doors.anthropic import AnthropicDoor, CountTokens
from proxy.doors.audio import AudioDoor
from proxy.doors.dify import DifyAPI, DifyDoor
from proxy.doors.embeddings import EmbeddingsDoor
from proxy.doors.images import ImagesDoor
from proxy.doors.openai_chat import OpenAIFrontDoor, error_response
from proxy.doors.responses import ResponsesDoor
from proxy.engine import Engine
from proxy.errors import RequestError, StoreUnavailable, VerificationError
from proxy.health import readiness
from proxy.http_util import CLIENT_CLOSED, ClientGone, read_body
from proxy.logs import REQUEST_ID, event, request_id
from proxy.metrics import Metrics
from proxy.recent import Recent
from proxy.recovery import Recovery
from proxy.refusals import Refusals
from proxy.reload import Reloader, watch
from proxy.runner import Runner
from proxy.status import StatusPage
from proxy.types import WebRequest

log = logging.getLogger("switchboard")
#: On a 408 the rest of a slow body is not worth reading: the connection closes after the answer.
CLOSE = {"connection": "close"}


class Hooks:
    """`/hooks/{name}`: hand the raw request to the platform adapter of that name."""

    def __init__(self, settings: Settings, metrics: Metrics, dispatcher: Dispatcher, recent: Recent) -> None:
        self.settings = settings
        self.metrics = metrics
        self.recent = recent
        self.dispatcher = dispatcher
        self.platforms: dict[str, Platform] = {}
        #: The outbound connections of adapters in a connection mode (proxy/connections.py).
        self.connections = Connections()
        self._handling: dict[Platform, int] = {}  # webhook requests in flight, per adapter

    async def start(self) -> None:
        self.platforms.update(await self._build(self.settings, list(self.settings.platforms)))

    async def _build(self, settings: Settings, names: list[str]) -> dict[str, Platform]:
        built: dict[str, Platform] = {}
        for name in names:
            a = settings.platforms[name]
            if a.disabled is None and a.cls is not None:
                platform = a.cls(name, a.config, self.dispatcher.context(name))
                try:
                    await platform.start()
                except Exception:
                    log.exception("platform %s (%s) failed to start; it stays enabled", name, a.kind)
                built[name] = platform
                self.connections.start(platform)
                how = "holding a connection" if platform.connects() else f"listening at /hooks/{name}"
                log.info("platform %s (%s) %s", name, a.kind, how)
        return built

    # -- reload (proxy/reload.py) ------------------------------------------------------------

    async def build(self, running: Settings, new: Settings) -> dict[str, Platform]:
        """Start the platforms of `new` whose block is new or changed."""
        changed = [n for n, a in new.platforms.items() if running.platforms.get(n) != a or n not in self.platforms]
        return await self._build(new, changed)

    def use(self, new: Settings, built: dict[str, Platform]) -> list[Platform]:
        """Swap to `new` (synchronously, in place: recovery reads the same mapping); returns the
        adapters replaced or removed."""
        self.settings = new
        retired = [
            p
            for n, p in self.platforms.items()
            if n in built or (a := new.platforms.get(n)) is None or a.disabled is not None
        ]
        for p in retired:
            self.platforms.pop(p.name, None)
        self.platforms.update(built)
        return retired

    def busy(self, platform: Platform) -> bool:
        """Is a webhook request or a reply of this adapter in flight?"""
        if self._handling.get(platform):
            return True
        return any(p is platform for p, _ in self.dispatcher.claims.active.values())

    async def close_all(self, platforms: Iterable[Platform]) -> None:
        for p in platforms:
            await self.connections.stop(p)
            try:
                await p.close()
            except Exception:
                log.exception("closing platform %s failed", p.name)

    async def close(self) -> None:
        await self.close_all(self.platforms.values())

    async def handle(self, request: Request) -> Response:
        name = request.path_params["name"]
        platform = self.platforms.get(name)
        if platform is None:
            adapter = self.settings.platforms.get(name)
            why = f"platform {name!r} is disabled: {adapter.disabled}" if adapter else f"no platform named {name!r}"
            return Response(why, 404 if adapter is None else 503)
        status = 500
        started = time.monotonic()
        rid = request_id(request.headers.get("x-request-id"))
        token = REQUEST_ID.set(rid)  # the answer started from here (a background task) inherits it
        self._handling[platform] = self._handling.get(platform, 0) + 1
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
            headers = {**out.headers, "x-request-id": rid}
            return Response(out.body, out.status, headers=headers, media_type=out.content_type)
        except VerificationError as e:
            status = e.status
            log.warning("platform %s: request refused: %s", name, e.reason)
            return Response("unauthorized", e.status)
        except RequestError as e:
            status = e.status
            return Response(e.message, e.status, headers=CLOSE if e.status == 408 else None)
        except StoreUnavailable as e:  # nothing claimed: the platform delivers it again later
            status = 503
            self.dispatcher.engine.store_failed(name)
            log.warning("platform %s: request refused: %s", name, e)
            return Response("store unavailable, retry later", 503, headers={"retry-after": "5"})
        except ClientGone:  # the client's own doing: no traceback, no 500
            status = CLIENT_CLOSED
            log.debug("platform %s: the client left before its request body arrived", name)
            return Response(b"", CLIENT_CLOSED)
        except Exception:
            log.exception("platform %s: handling a request failed", name)
            return Response("internal error", 500)
        finally:
            self.metrics.hooks.labels(name, str(status)).inc()
            seconds = time.monotonic() - started
            deadline = platform.ack_deadline
            missed = deadline is not None and seconds > deadline and status != CLIENT_CLOSED
            if missed:
                self.metrics.deadline_misses.labels(name).inc()
                log.warning("platform %s: acknowledged after %.1f s (it waits %.0f s)", name, seconds, deadline)
            self.recent.hook(name, status, seconds, missed)
            REQUEST_ID.reset(token)
            event(
                log,
                logging.INFO,
                "webhook",
                request_id=rid,
                platform=name,
                status=status,
                latency_ms=round(seconds * 1000, 1),
                deadline_missed=missed or None,
            )
            left = self._handling.pop(platform) - 1
            if left:
                self._handling[platform] = left


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


def create_app(
    settings: Settings, *, on_ready: Callable[[], None] | None = None, reload_on_sighup: bool = False
) -> Starlette:
    """The app. `on_ready` runs once start-up (engine, store, platforms) has finished.
    `reload_on_sighup` (`serve`): SIGHUP reloads the config instead of ending the process."""
    metrics = Metrics()
    recent = Recent()

    def observe(channel: str, provider: str, outcome: str, seconds: float) -> None:
        metrics.observe_attempt(channel, provider, outcome, seconds)
        recent.attempt(channel, provider, outcome, seconds)

    engine = Engine(
        settings,
        observe=observe,
        limited=metrics.count_limited,
        tokens=metrics.count_tokens,
        retried=lambda provider: metrics.retries.labels(provider).inc(),
    )
    engine.store_failed = lambda where: metrics.store_errors.labels(where).inc()
    runner = Runner(settings.raw.server.max_concurrent_generations)
    dispatcher = Dispatcher(engine, runner, settings, metrics.observe_request)
    dispatcher.duplicate = lambda platform: metrics.duplicates.labels(platform).inc()
    refusals = Refusals(metrics)
    front = OpenAIFrontDoor(engine, settings, refusals, metrics.observe_request)
    anthropic = AnthropicDoor(engine, settings, refusals, metrics.observe_request)
    embeddings = EmbeddingsDoor(engine, settings, refusals, metrics.observe_request)
    responses = ResponsesDoor(engine, settings, refusals, metrics.observe_request)
    images = ImagesDoor(engine, settings, refusals, metrics.observe_request)
    audio = AudioDoor(engine, settings, refusals, metrics.observe_request)
    dify = {
        m: DifyDoor(engine, settings, refusals, metrics.observe_request, mode=m)
        for m in ("chat", "completion", "workflow")
    }
    dify_api = DifyAPI(dify["chat"])
    hooks = Hooks(settings, metrics, dispatcher, recent)
    recovery = Recovery(dispatcher, hooks.platforms, settings.raw.server)

    def use(new: Settings) -> None:  # part of the reload's synchronous swap
        front.use(new)
        anthropic.use(new)
        embeddings.use(new)
        responses.use(new)
        images.use(new)
        audio.use(new)
        for door in dify.values():
            door.use(new)
        dispatcher.settings = new

    reloader = Reloader(engine, use, hooks, metrics.count_reload)
    dispatcher.admin = ChatAdmin(engine, reloader)
    admin = Admin(lambda: engine.settings, reloader, lambda: engine.store)
    status_page = StatusPage(engine, admin, recent, lambda: hooks.platforms)

    def circuits() -> dict[str, tuple[str, float]]:
        now = time.monotonic()
        failover = engine.failover
        return {n: c.report(now) for n, c in failover.circuits.items()} if failover else {}

    metrics.watch(circuits, lambda: engine.failover.inflight if engine.failover else 0)
    metrics.watch_connections(hooks.connections.status)
    stop_watching = asyncio.Event()

    def on_sighup() -> None:
        runner.spawn(reloader.reload("sighup"), "reload:sighup")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        logging.getLogger("switchboard").addHandler(recent.errors)
        await engine.start()
        await hooks.start()
        await recovery.start()
        if reload_on_sighup:  # uvicorn handles SIGINT/SIGTERM only; SIGHUP would end the process
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_sighup)
        if settings.raw.server.watch_config and settings.path is not None:
            runner.spawn(watch(reloader, settings.path, stop_watching), "watch-config")
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
            if reload_on_sighup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            stop_watching.set()
            recovery.stop()
            await hooks.connections.close()  # no new events while the answers in flight finish
            cut = await runner.drain(settings.raw.server.drain_seconds)
            if cut:
                log.warning(
                    "shutdown: %d in-flight repl%s cut off; the next start answers them (claims left to run out)",
                    cut,
                    "y" if cut == 1 else "ies",
                )
            await reloader.close()
            await hooks.close()
            await engine.close()
            logging.getLogger("switchboard").removeHandler(recent.errors)

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def readyz(request: Request) -> Response:
        status, body = await readiness(engine.settings, engine)
        links = hooks.connections.status()
        if links:  # platforms in a connection mode: a lost one degrades, it does not stop serving
            body["connections"] = links
            if status == 200 and any(link["state"] != "connected" for link in links.values()):
                body["status"] = "degraded"
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
        Route("/v1/messages", anthropic, methods=["POST"]),
        Route("/v1/messages/count_tokens", CountTokens(anthropic), methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/responses", responses, methods=["POST"]),
        Route("/v1/images/generations", images, methods=["POST"]),
        Route("/v1/audio/transcriptions", audio, methods=["POST"]),
        Route("/dify/v1/chat-messages", dify["chat"], methods=["POST"]),
        Route("/dify/v1/chat-messages/{task_id}/stop", dify_api.stop, methods=["POST"]),
        Route("/dify/v1/completion-messages", dify["completion"], methods=["POST"]),
        Route("/dify/v1/workflows/run", dify["workflow"], methods=["POST"]),
        Route("/dify/v1/conversations", dify_api.conversations, methods=["GET"]),
        Route("/dify/v1/conversations/{conversation_id}", dify_api.delete, methods=["DELETE"]),
        Route("/dify/v1/conversations/{conversation_id}/name", dify_api.rename, methods=["POST"]),
        Route("/dify/v1/messages", dify_api.messages, methods=["GET"]),
        Route("/dify/v1/parameters", dify_api.parameters, methods=["GET"]),
        Route("/dify/v1/meta", dify_api.meta, methods=["GET"]),
        Route("/dify/v1/info", dify_api.info, methods=["GET"]),
        Route("/v1/models", front.models, methods=["GET"]),
        Route("/v1/models/{model:path}", front.model, methods=["GET"]),
        Route("/hooks/{name}", hooks.handle, methods=["GET", "POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/admin/reload", admin.reload, methods=["POST"]),
        Route("/admin/usage", admin.usage, methods=["GET"]),
        Route("/status", status_page.page, methods=["GET"]),
        Route("/status/login", status_page.login, methods=["POST"]),
        Route("/status/logout", status_page.logout, methods=["POST"]),
    ]
    app = SwitchboardApp(front, routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.engine, app.state.hooks, app.state.runner = engine, hooks, runner
    app.state.refusals, app.state.reloader, app.state.recent = refusals, reloader, recent
    return app
