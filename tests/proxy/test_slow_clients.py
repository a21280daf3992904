"""Clients that leave or dawdle (issue 9): a client abort is not a 500, and a connection that
trickles its headers or its body is answered 408 and closed — on real sockets to a real uvicorn,
with deadlines short enough that the tests are quick, and no timing assertions."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from proxy import cli
from proxy.app import create_app
from proxy.config import parse_config
from proxy.errors import ConfigError, RequestError
from proxy.header_deadline import with_header_deadline
from proxy.http_util import read_body
from tests.servers import serve_asgi

KEY = "sk-slow"
TOKEN = "syno-token-1"
FORM = f"token={TOKEN}&user_id=4&post_id=1&text=hi".encode()
AUTH = {"authorization": f"Bearer {KEY}"}


def settings(**server: Any) -> Any:
    return parse_config(
        {
            "server": server,
            "store": {"url": "memory://"},
            "keys": [{"key": KEY}],
            "providers": {"echo": {"kind": "echo"}, "slow": {"kind": "echo", "delay": 0.1}},
            "platforms": {"nas": {"kind": "synology", "token": TOKEN, "incoming_url": "http://127.0.0.1:9/x"}},
            "channels": [{"name": "demo", "providers": ["echo"]}, {"name": "slow", "providers": ["slow"]}],
        },
        {},
    )


@contextlib.asynccontextmanager
async def server(header_timeout: float = 30.0, base: Any = None, **config: Any) -> AsyncIterator[tuple[str, int]]:
    """Switchboard on uvicorn with the header deadline, as `switchboard serve` runs it."""
    app = create_app(settings(**config))
    async with serve_asgi(app, http=with_header_deadline(header_timeout, base)) as url:
        yield url, int(url.rsplit(":", 1)[1])


async def trickle_until_closed(port: int, head: bytes, drip: bytes) -> bytes:
    """Send `head`, then `drip` a byte at a time until the server closes the connection; all
    that the server sent. (Bounded: a server that never closes fails the test's timeout.)"""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)

    async def drip_feed() -> None:
        with contextlib.suppress(ConnectionError):
            for i in range(100_000):
                writer.write(drip[i % len(drip) : i % len(drip) + 1])
                await writer.drain()
                await asyncio.sleep(0.02)

    feeder = asyncio.create_task(drip_feed())
    try:
        received = b""
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                received += chunk
        return received  # EOF: the server closed the connection
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        writer.close()


def hook_count(metrics: str, status: str) -> float:
    prefix = f'switchboard_hook_requests_total{{platform="nas",status="{status}"}} '
    return sum(float(line[len(prefix) :]) for line in metrics.splitlines() if line.startswith(prefix))


# -- finding 6: header and body deadlines -------------------------------------------------------


@pytest.mark.parametrize("base", [HttpToolsProtocol, H11Protocol])
async def test_trickled_headers_get_408_and_the_connection_closed(base: Any):
    async with server(header_timeout=0.3, base=base) as (url, port):
        head = b"POST /hooks/nas HTTP/1.1\r\nHost: x\r\n"
        answers = await asyncio.gather(*(trickle_until_closed(port, head, b"X-Slow: y\r\n") for _ in range(75)))
        assert all(a.startswith(b"HTTP/1.1 408 ") and b"connection: close" in a for a in answers)
        async with httpx.AsyncClient() as c:  # the server still answers, keep-alive included
            for _ in range(2):
                r = await c.post(f"{url}/hooks/nas", content=FORM)
                assert (r.status_code, r.text) == (200, "{}")


async def test_answers_that_outlast_the_header_deadline_are_untouched():
    async with server(header_timeout=0.2) as (url, _), httpx.AsyncClient() as c:
        request = {"model": "slow", "messages": [{"role": "user", "content": "one two three four five"}]}
        for stream in (False, True, False):  # about 0.6 s each, on one keep-alive connection
            r = await c.post(f"{url}/v1/chat/completions", json={**request, "stream": stream}, headers=AUTH)
            assert r.status_code == 200
            if stream:
                assert '"content":" five"' in r.text and r.text.endswith("data: [DONE]\n\n")
            else:
                assert r.json()["choices"][0]["message"]["content"] == "echo: one two three four five"


async def test_a_silent_connection_is_closed_too():
    async with server(header_timeout=0.3) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await reader.read()).startswith(b"HTTP/1.1 408 ")  # read() returns at EOF
        writer.close()


async def test_trickled_webhook_body_gets_408_and_the_connection_closed():
    async with server(body_timeout=0.3) as (_, port):
        head = b"POST /hooks/nas HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
        answer = await trickle_until_closed(port, head, FORM)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"connection: close" in answer
        assert answer.endswith(b"The request body did not arrive within 0.3 seconds.")


async def test_trickled_chat_completion_body_gets_408_in_openai_json_and_is_closed():
    async with server(body_timeout=0.3) as (_, port):
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
        )
        answer = await trickle_until_closed(port, head, b'{"model": "demo", "messages": []}')
        status, _, body = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 408 ") and b"connection: close" in status
        assert orjson.loads(body)["error"]["code"] == "request_timeout"


async def test_read_body_deadline_is_a_408_request_error():
    async def never() -> Any:
        await asyncio.Event().wait()

    with pytest.raises(RequestError) as e:
        await read_body(never, 1000, deadline=0.01)
    assert (e.value.status, e.value.code) == (408, "request_timeout")

    async def whole() -> Any:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    assert await read_body(whole, 1000, deadline=0.01) == b"{}"

    reading = asyncio.create_task(read_body(never, 1000, deadline=60))
    await asyncio.sleep(0)
    reading.cancel()  # someone else's cancellation stays a cancellation
    with pytest.raises(asyncio.CancelledError):
        await reading


def test_deadlines_are_validated_config_and_serve_uses_the_header_deadline(tmp_path, monkeypatch):
    for field in ("header_timeout", "body_timeout"):
        with pytest.raises(ConfigError) as e:
            settings(**{field: 0})
        assert f"server.{field}" in str(e.value)
    defaults = settings().raw.server
    assert (defaults.header_timeout, defaults.body_timeout) == (10.0, 30.0)

    path = tmp_path / "config.yaml"
    path.write_text("server: {header_timeout: 4}\nstore: {url: 'memory://'}\n")
    seen: dict[str, Any] = {}

    def run(server: Any, sockets: Any = None) -> None:
        seen.update(http=server.config.http, sockets=sockets)
        for sock in sockets:
            sock.close()

    monkeypatch.setattr("uvicorn.Server.run", run)
    assert cli.serve(argparse.Namespace(config=str(path), host=None, port=0)) == 0
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    assert issubclass(seen["http"], AutoHTTPProtocol) and seen["http"].header_timeout == 4
    assert len(seen["sockets"]) == 1  # serve binds the port itself, before start-up


# -- finding 5: a client that leaves mid-body --------------------------------------------------


async def test_client_leaving_mid_body_is_counted_apart_and_logged_quietly(caplog):
    async with server() as (url, port):
        with caplog.at_level(logging.DEBUG):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /hooks/nas HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + FORM)
            await writer.drain()
            writer.close()
            async with httpx.AsyncClient() as c:
                for _ in range(500):  # until the server has noticed (bounded by the count)
                    metrics = (await c.get(f"{url}/metrics")).text
                    if hook_count(metrics, "499"):
                        break
                    await asyncio.sleep(0.01)
        assert hook_count(metrics, "499") == 1 and hook_count(metrics, "500") == 0
        # The service's own records only: an SDK client another test left unclosed may be
        # collected here, and its finalizer's complaint is not this server's logging.
        ours = [r for r in caplog.records if r.name.split(".")[0] in ("switchboard", "uvicorn")]
        assert not [r for r in ours if r.levelno >= logging.WARNING or r.exc_info]
        assert "left before its request body arrived" in caplog.text
