"""`switchboard` / `python -m proxy`: serve, check, chat, reload."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import os
import signal
import socket
import sys
from functools import partial
from typing import Any, TextIO

from proxy import logs
from proxy.config import Settings, load_config
from proxy.contracts import Provider
from proxy.errors import ConfigError
from proxy.logs import LogFormat
from proxy.probe import PROBE_SECONDS, ProbeOutcome, ProbeResult

DEFAULT_CONFIG = os.environ.get("SWITCHBOARD_CONFIG", "config.yaml")


def setup_logging(level: str, fmt: LogFormat = "text") -> None:
    logs.setup(level, fmt)


def _load(path: str) -> Settings:
    try:
        return load_config(path)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


# ----------------------------------------------------------------------------------------- serve


def tune_gc(threshold: int) -> None:
    """Freeze what start-up allocated (imports, config, clients: never garbage) out of the cyclic
    collector, and collect young objects less often than Python's default (700). Reference
    counting frees almost everything a request allocates, so with a threshold a little above
    what one burst of requests keeps alive, steady traffic triggers almost no collections, while
    each collection (a pause for every open stream) stays a few milliseconds. Generation 1 is
    collected every 5 young passes so it stays small too."""
    if threshold:
        gc.collect()
        gc.freeze()
        gc.set_threshold(threshold, 5, 20)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from proxy.app import create_app
    from proxy.header_deadline import with_header_deadline

    settings = _load(args.config)
    server = settings.raw.server
    setup_logging(server.log_level, server.log_format)
    host, port = args.host or server.host, args.port if args.port is not None else server.port
    try:  # bound before start-up, so "ready" is only ever logged with the port ours
        sock = listen(host, port)
    except OSError as e:
        print(f"{host}:{port} {_bind_problem(e)}: set server.port or --port", file=sys.stderr)
        return 2
    for line in route_table(settings):
        logging.getLogger("switchboard").info("route %s", line.strip())
    config = uvicorn.Config(
        create_app(settings, on_ready=partial(tune_gc, server.gc_threshold), reload_on_sighup=True),
        log_level="warning" if server.log_level == "info" else server.log_level,
        log_config=None,  # uvicorn's lines go through our handler (text or JSON, off the loop)
        access_log=False,
        lifespan="on",
        loop="auto",
        http=with_header_deadline(server.header_timeout),  # uvicorn's own "auto" choice, plus the deadline
        timeout_graceful_shutdown=int(server.drain_seconds) + 5,
    )
    logging.getLogger("switchboard").info("listening on http://%s:%d", host, port)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv6 when the host is an IPv6 address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may bind at once
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _bind_problem(err: OSError) -> str:
    if err.errno == errno.EADDRINUSE:
        return "is in use"
    if err.errno == errno.EACCES:
        return "needs privileges to bind"
    if err.errno == errno.EADDRNOTAVAIL or isinstance(err, socket.gaierror):
        return "is not an address of this machine"
    return f"cannot be bound ({err.strerror or err})"


# ----------------------------------------------------------------------------------------- check


def _match_text(m: object) -> str:
    parts = [f"{k}={v}" for k, v in vars(m).items() if v is not None] if hasattr(m, "__dict__") else []
    return ", ".join(parts) or "anything"


def route_table(settings: Settings) -> list[str]:
    lines = []
    for ch in settings.channels:
        chain = " → ".join(ch.config.providers)
        off = f"  (disabled: {', '.join(ch.skipped)})" if ch.skipped else ""
        lines.append(f"  {ch.name:<16} match {_match_text(ch.config.match):<40} → {chain}{off}")
    return lines


def check(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    settings = _load(args.config)
    print(f"config {args.config}: OK", file=out)
    print(f"store: {settings.raw.store.scheme}://   keys: {len(settings.raw.keys)}", file=out)
    for title, adapters in (("providers", settings.providers), ("platforms", settings.platforms)):
        print(f"{title}:", file=out)
        if not adapters:
            print("  (none)", file=out)
        for name, a in adapters.items():
            state = f"disabled: {a.disabled}" if a.disabled else "enabled"
            print(f"  {name:<16} {a.kind:<12} {state}", file=out)
    print("channels (first match wins):", file=out)
    for line in route_table(settings) or ["  (none)"]:
        print(line, file=out)
    if args.live:
        return asyncio.run(_live(settings, out))
    return 0


async def _live(settings: Settings, out: TextIO) -> int:
    """Open the store and probe every enabled provider (a cheap real call per key, all at once).
    1 when the store or any enabled provider is unusable (no key with a usable outcome)."""
    from proxy.engine import Engine

    engine = Engine(settings)
    await engine.start()
    try:
        ok = await engine.store.ping()
        print(f"store: {'reachable' if ok else 'UNREACHABLE'}", file=out)
        names = list(engine.providers)
        found = dict(zip(names, await asyncio.gather(*(_probe(engine.providers[n]) for n in names)), strict=True))
        links = await _connections(settings, engine)
    finally:
        await engine.close()
    if links:
        print("platform connections, live (opened, then closed before any event is read):", file=out)
        for name, why in links.items():
            print(f"  {name:<16} {'connected' if why is None else 'FAILED: ' + why}", file=out)
        ok = ok and all(why is None for why in links.values())
    print(f"providers, live (one cheap call per key, {PROBE_SECONDS:.0f} s each):", file=out)
    dead = []
    for name, a in settings.providers.items():
        if name not in found:
            print(f"  {name:<16} {'-':<12} not probed: disabled ({a.disabled or 'not started'})", file=out)
            continue
        for result in found[name]:
            print(f"  {name:<16} {result.key:<12} {result}", file=out)
        if not any(r.outcome.usable for r in found[name]):
            dead.append(name)
    if dead:
        print(f"unusable: {', '.join(dead)} (no key is usable)", file=out)
    return 0 if ok and not dead else 1


class _Connected(Exception):
    """Raised from a connection's `up()` in `check --live`: it worked; stop before any event."""


async def _connections(settings: Settings, engine: Any) -> dict[str, str | None]:
    """Each enabled platform in a connection mode: open its connection once (credentials, the
    gateway, the handshake) and close it as soon as the platform accepts it. None: it worked."""
    from proxy.dispatch import Dispatcher
    from proxy.runner import Runner

    dispatcher = Dispatcher(engine, Runner(1), settings)
    out: dict[str, str | None] = {}
    for name, a in settings.platforms.items():
        if a.disabled is not None or a.cls is None:
            continue
        platform = a.cls(name, a.config, dispatcher.context(name))
        if not platform.connects():
            continue

        def up() -> None:
            raise _Connected

        try:
            await asyncio.wait_for(platform.connection(up), PROBE_SECONDS * 3)
            out[name] = "the platform closed the connection at once"
        except _Connected:
            out[name] = None
        except TimeoutError:
            out[name] = "no answer in time"
        except Exception as e:  # only the type and the message: the connection's own words
            out[name] = f"{type(e).__name__}: {e}"[:200]
    return out


def setup(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    setup_logging("warning")
    return asyncio.run(_setup(settings, sys.stdout))


async def _setup(settings: Settings, out: TextIO) -> int:
    """Each enabled platform's `setup()` (Telegram's setWebhook, ...); 1 when one failed."""
    from proxy.dispatch import Dispatcher
    from proxy.engine import Engine
    from proxy.runner import Runner

    engine = Engine(settings)
    await engine.start()
    failed = False
    try:
        dispatcher = Dispatcher(engine, Runner(1), settings)
        for name, a in settings.platforms.items():
            if a.disabled is not None or a.cls is None:
                print(f"  {name:<16} skipped: disabled ({a.disabled})", file=out)
                continue
            platform = a.cls(name, a.config, dispatcher.context(name))
            try:
                done = await asyncio.wait_for(platform.setup(), PROBE_SECONDS * 3)
            except Exception as e:  # the type and the platform's words; never a URL with a token
                failed = True
                print(f"  {name:<16} FAILED: {type(e).__name__}: {e}"[:240], file=out)
                continue
            print(f"  {name:<16} {done or 'nothing to set up'}", file=out)
    finally:
        await engine.close()
    return 1 if failed else 0


async def _probe(provider: Provider) -> list[ProbeResult]:
    """One provider's probe. A probe that overruns or breaks is a result too, never a crash of
    `check` (only the exception's type is shown: its text might hold a key)."""
    try:
        results = await asyncio.wait_for(provider.probe(), PROBE_SECONDS * 3)
    except TimeoutError:
        return [ProbeResult("-", ProbeOutcome.TIMED_OUT, "the probe did not finish")]
    except Exception as e:
        return [ProbeResult("-", ProbeOutcome.NOT_PROBED, f"the probe broke: {type(e).__name__}")]
    return results or [ProbeResult("-", ProbeOutcome.NOT_PROBED, "the probe found nothing to call")]


# ------------------------------------------------------------------------------------------ chat


def chat(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    setup_logging("warning")
    if args.channel not in settings.by_name:
        print(f"unknown channel {args.channel!r} (valid: {', '.join(settings.by_name) or 'none'})", file=sys.stderr)
        return 2
    return asyncio.run(_chat(settings, args.channel, args.session))


async def _chat(settings: Settings, name: str, session: str) -> int:
    from proxy.engine import Engine
    from proxy.errors import ChainFailed, RequestRejected, StreamInterrupted
    from proxy.failover import Outcome
    from proxy.routing import conversation as conversation_of
    from proxy.types import Message

    engine = Engine(settings)
    await engine.start()
    channel = settings.by_name[name]
    conversation = conversation_of(name, "cli", session)
    print(f"chatting with channel {name!r} — /clear forgets, /exit or Ctrl-D leaves", file=sys.stderr)
    try:
        while True:
            try:
                line = await asyncio.to_thread(input, "you> ")
            except EOFError:
                break
            text = line.strip()
            if text in ("/exit", "/quit"):
                break
            if text == "/clear":
                await engine.store.clear(conversation)
                print("(history cleared)")
                continue
            if not text:
                continue
            turn = [Message("user", text)]
            req = await engine.request(channel, turn, conversation=conversation, user=f"cli:{session}")
            outcome = Outcome()
            answer: list[str] = []
            try:
                async for d in engine.stream(channel, req, outcome):
                    if d.text:
                        if not answer:
                            print(f"{outcome.provider}> ", end="", flush=True)
                        answer.append(d.text)
                        print(d.text, end="", flush=True)
                print()
                await engine.record(conversation, turn, "".join(answer))
            except (ChainFailed, RequestRejected, StreamInterrupted) as e:
                print(f"\n(error: {e})", file=sys.stderr)
    finally:
        await engine.close()
    return 0


def config_reference(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print the config reference (docs/config-reference.md is this output)."""
    from proxy.config_reference import markdown

    (out or sys.stdout).write(markdown())
    return 0


# ---------------------------------------------------------------------------------------- reload


def reload(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Ask a running server to reload its config: `POST /admin/reload` with the admin key in
    SWITCHBOARD_ADMIN_KEY, or SIGHUP to `--pid`. 0 when it reloaded, 1 when it refused the config
    (the running one stays) or could not be reached, 2 when this command was used wrongly."""
    out = out or sys.stdout
    if args.pid is not None:
        try:
            os.kill(args.pid, signal.SIGHUP)
        except OSError as e:
            print(f"cannot signal process {args.pid}: {e.strerror}", file=sys.stderr)
            return 1
        print(f"sent SIGHUP to process {args.pid}; its log says how the reload went", file=out)
        return 0
    key = os.environ.get("SWITCHBOARD_ADMIN_KEY", "")
    if not key:
        print("set SWITCHBOARD_ADMIN_KEY to one of the server's admin.keys (or give --pid)", file=sys.stderr)
        return 2
    url = args.url or _server_url(_load(args.config))
    return _post_reload(url.rstrip("/") + "/admin/reload", key, out)


def _server_url(settings: Settings) -> str:
    host = settings.raw.server.host
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.raw.server.port}"


def _post_reload(url: str, key: str, out: TextIO) -> int:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, b"", {"Authorization": f"Bearer {key}"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            status, body = answer.status, answer.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        print(f"cannot reach {url}: {getattr(e, 'reason', e)}", file=sys.stderr)
        return 1
    try:
        data = json.loads(body)
    except ValueError:
        data = {}
    if status == 200:
        changed = ", ".join(data.get("changed", [])) or "nothing changed"
        print(f"reloaded: {changed}", file=out)
        if data.get("needs_restart"):
            print(f"needs a restart: {', '.join(data['needs_restart'])}", file=out)
        return 0
    why = data.get("error")
    message = why.get("message") if isinstance(why, dict) else why
    print(f"reload failed (HTTP {status}): {message or body.decode(errors='replace')[:300]}", file=sys.stderr)
    return 1


# ----------------------------------------------------------------------------------------- usage


def usage(args: argparse.Namespace) -> int:
    """Tokens spent, from the store the config names (a running server writes every few seconds)."""
    from proxy.engine import open_store
    from proxy.usage import BY, query, table

    settings = _load(args.config)

    async def read() -> dict[str, object]:
        store = open_store(settings.raw.store.url)
        await store.open()
        try:
            return await query(store, args.by, args.since, settings.raw.prices)
        finally:
            await store.close()

    try:
        data = asyncio.run(read())
    except ValueError as e:
        print(f"usage: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        print(f"cannot read usage from the store (store.url): {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args.json:
        import json

        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    groups = data["groups"]
    assert isinstance(groups, list) and args.by in BY
    print(f"tokens since {data['since']}, by {args.by}")
    print(table(groups, args.by) if groups else "(no usage recorded)")
    return 0


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="switchboard", description="One endpoint for every chat bot.")
    parser.add_argument("--version", action="version", version=f"switchboard {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="serve the config")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=serve)
    p = sub.add_parser("check", help="validate a config and print the route table")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--live", action="store_true", help="also open the store and probe every enabled provider, per key")
    p.set_defaults(func=check)
    p = sub.add_parser("chat", help="talk to a channel from the terminal")
    p.add_argument("channel")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--session", default=os.environ.get("USER", "local"))
    p.set_defaults(func=chat)
    p = sub.add_parser("setup", help="register webhooks and commands with the configured platforms")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.set_defaults(func=setup)
    p = sub.add_parser("config-reference", help="print every config key, its type, default and meaning")
    p.add_argument("--format", choices=["markdown"], default="markdown")
    p.set_defaults(func=config_reference)
    p = sub.add_parser("reload", help="make a running server reload its config")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="where to find the server's address")
    p.add_argument("--url", help="the server's base URL (default: from the config's server.host/port)")
    p.add_argument("--pid", type=int, help="send SIGHUP to this process instead of calling /admin/reload")
    p.set_defaults(func=reload)
    p = sub.add_parser("usage", help="tokens spent, by channel, provider, model, key or user")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--by", choices=["channel", "provider", "model", "key", "platform", "user"], default="channel")
    p.add_argument("--since", default="24h", help="how far back: 90m, 24h, 7d, 30d (default 24h)")
    p.add_argument("--json", action="store_true", help="print JSON (the same as GET /admin/usage)")
    p.set_defaults(func=usage)
    args = parser.parse_args(argv)
    return int(args.func(args))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("switchboard")
    except PackageNotFoundError:  # run from a clone that was never installed
        return "unknown (not installed)"


if __name__ == "__main__":
    raise SystemExit(main())
