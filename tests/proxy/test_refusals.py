"""Requests refused at the OpenAI front door are counted in `/metrics` by status and reason, and
logged sparingly (one line per status per interval, saying how many were not logged), never with
the key or the body. A real server, real clients, a fake upstream for the backend's refusals."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.app import create_app
from proxy.config import parse_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import serve_asgi

KEY = "sk-test-refusals"
WRONG = "sk-wrong-key-do-not-log-1234"
SECRET_TEXT = "my-private-words-in-the-body"


def app(upstream: str) -> Any:
    settings = parse_config(
        {
            "server": {"max_body_bytes": 4096, "body_timeout": 0.3},
            "store": {"url": "memory://"},
            "keys": [{"key": KEY}],
            "providers": {"echo": {"kind": "echo"}, "up": {"kind": "openai", "base_url": upstream, "api_key": "sk-u"}},
            "channels": [{"name": "demo", "providers": ["echo"]}, {"name": "gpt", "providers": ["up"]}],
        },
        {},
    )
    return create_app(settings)


def refused(metrics: str) -> dict[tuple[str, str], float]:
    """(status, reason) -> count, from `switchboard_api_requests_refused_total`."""
    out = {}
    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            if s.name == "switchboard_api_requests_refused_total":
                out[s.labels["status"], s.labels["reason"]] = s.value
    return out


async def slow_body(url: str) -> bytes:
    """A chat completion whose body stops halfway: answered 408 once `body_timeout` passes."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer " + KEY.encode() + b'\r\ncontent-length: 100\r\n\r\n{"model":'
    )
    await writer.drain()
    answer = await reader.read()  # until the server closes the connection
    writer.close()
    return answer


async def test_refusals_are_counted_by_status_and_reason():
    async with FakeOpenAI() as fake, serve_asgi(app(fake.base_url)) as url:
        sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        ask = [{"role": "user", "content": "hi"}]
        assert (await sdk.chat.completions.create(model="demo", messages=ask)).choices  # answered: not counted
        for _ in range(3):
            with pytest.raises(openai.AuthenticationError):
                await openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=WRONG, max_retries=0).models.list()
        with pytest.raises(openai.AuthenticationError):
            bad = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=WRONG, max_retries=0)
            await bad.chat.completions.create(model="demo", messages=ask)
        with pytest.raises(openai.NotFoundError):
            await sdk.chat.completions.create(model="nope", messages=ask)
        with pytest.raises(openai.NotFoundError):
            await sdk.models.retrieve("nope")
        with pytest.raises(openai.BadRequestError):
            await sdk.chat.completions.create(model="demo", messages=[])
        with pytest.raises(openai.BadRequestError) as e:  # the backend refuses it
            await sdk.chat.completions.create(model="gpt", messages=ask, extra_body={"temperature": "hot"})
        assert e.value.code == "invalid_type"
        with pytest.raises(openai.APIStatusError) as e:
            await sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "x" * 5000}])
        assert e.value.status_code == 413
        assert b" 408 " in (await slow_body(url)).split(b"\r\n", 1)[0]
        async with httpx.AsyncClient() as h:
            assert (await h.get(f"{url}/v1/nothing", headers={"authorization": f"Bearer {KEY}"})).status_code == 404
            metrics = (await h.get(f"{url}/metrics")).text
    assert refused(metrics) == {
        ("401", "invalid_api_key"): 4,
        ("404", "model_not_found"): 2,
        ("404", "no_such_route"): 1,
        ("400", "invalid_request"): 1,
        ("400", "upstream_rejected"): 1,
        ("413", "request_too_large"): 1,
        ("408", "request_timeout"): 1,
    }


async def test_refusals_are_logged_once_per_status_and_interval_without_key_or_body(caplog):
    now = [1000.0]
    async with FakeOpenAI() as fake:
        server = app(fake.base_url)
        server.state.refusals.clock = lambda: now[0]
        async with serve_asgi(server) as url, httpx.AsyncClient() as h:
            with caplog.at_level(logging.INFO, "switchboard.openai"):

                async def knock() -> None:
                    body = {"model": "demo", "messages": [{"role": "user", "content": SECRET_TEXT}]}
                    r = await h.post(
                        f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {WRONG}"}
                    )
                    assert r.status_code == 401

                for _ in range(3):
                    await knock()
                first = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
                now[0] += 11  # the interval (10 s) has passed
                await knock()
            lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert first == ["refused status=401 reason=invalid_api_key"]
    assert lines == [
        "refused status=401 reason=invalid_api_key",
        "refused status=401 reason=invalid_api_key; 2 more refused with 401 since the last such line",
    ]
    assert all(r.levelno == logging.INFO for r in caplog.records if "refused" in r.getMessage())
    assert WRONG not in caplog.text and SECRET_TEXT not in caplog.text
