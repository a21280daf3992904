"""One log line per finished request and per upstream attempt, tied by a request id: taken from
`X-Request-Id` (or made), returned in the response, carried into a platform event's background
answer. No secret appears; message contents only with `server.log_content`."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.app import create_app
from proxy.config import parse_config
from proxy.logs import JSONFormatter
from tests.fakes.openai_upstream import FakeOpenAI
from tests.platforms.synology.synology_kit import BOT_TOKEN, FakeNAS, form
from tests.servers import serve_asgi

API_KEY, UPSTREAM_KEY = "sk-callers-key-1", "sk-upstream-secret-9"
HI = [{"role": "user", "content": "what is the weather"}]


@pytest.fixture
def lines() -> Iterator[list[dict[str, Any]]]:
    """The JSON lines Switchboard's loggers write during the test."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("switchboard")
    before = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    parsed: list[dict[str, Any]] = []
    yield parsed
    logger.removeHandler(handler)
    logger.setLevel(before)


def read(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    handler = next(h for h in logging.getLogger("switchboard").handlers if isinstance(h.formatter, JSONFormatter))
    stream = handler.stream  # type: ignore[attr-defined]
    lines[:] = [json.loads(line) for line in stream.getvalue().splitlines()]
    return lines


def config(tmp: Path, upstream: str, nas: str, *, content: bool = False) -> dict[str, Any]:
    return {
        "server": {"log_content": content},
        "store": {"url": f"sqlite:///{tmp}/s.db"},
        "keys": [{"key": API_KEY, "name": "web-app"}],
        "failover": {"attempts": 1},
        "providers": {
            "first": {"kind": "openai", "base_url": upstream, "api_key": UPSTREAM_KEY},
            "second": {"kind": "openai", "base_url": upstream, "api_key": UPSTREAM_KEY},
        },
        "platforms": {"nas": {"kind": "synology", "tokens": [BOT_TOKEN], "api_base": nas, "bot_token": BOT_TOKEN}},
        "channels": [{"name": "assist", "providers": ["first", "second"]}],
    }


async def test_api_requests_and_attempts_share_an_id_and_leak_nothing(tmp_path: Path, lines: list[dict[str, Any]]):
    async with FakeOpenAI(answer="sunny all day") as up, FakeNAS() as nas:
        app = create_app(parse_config(config(tmp_path, up.base_url, nas.base), {}))
        async with serve_asgi(app) as url:
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
            raw = await client.chat.completions.with_raw_response.create(
                model="assist",
                messages=HI,
                extra_headers={"X-Request-Id": "caller-42"},  # type: ignore[arg-type]
            )
            assert raw.headers["x-request-id"] == "caller-42"
            up.fail(500)  # the first provider fails: failover to the second, in a stream
            stream = await client.chat.completions.with_raw_response.create(model="assist", messages=HI, stream=True)  # type: ignore[arg-type]
            made = stream.headers["x-request-id"]
            async for _ in stream.parse():
                pass
            async with httpx.AsyncClient() as c:
                bad = await c.post(
                    f"{url}/v1/chat/completions", json={}, headers={"x-request-id": "bad id with spaces"}
                )
                assert bad.status_code == 401 and bad.headers["x-request-id"] not in ("", "bad id with spaces")
                metrics = (await c.get(f"{url}/metrics")).text
    for line in (
        'switchboard_requests_total{channel="assist",door="openai",outcome="ok"} 2.0',
        'switchboard_requests_total{channel="-",door="openai",outcome="refused"} 1.0',
        'switchboard_failovers_total{channel="assist"} 1.0',
        'switchboard_time_to_first_token_seconds_count{channel="assist"} 1.0',
        'switchboard_request_seconds_count{door="openai"} 3.0',
    ):
        assert line in metrics, line
    got = read(lines)
    requests = [x for x in got if x.get("event") == "request"]
    assert [r["status"] for r in requests] == [200, 200, 401]
    first, second = requests[0], requests[1]
    assert first["request_id"] == "caller-42" and first["key"] == "web-app" and first["channel"] == "assist"
    assert first["provider"] == "first" and first["tokens_in"] == 5 and first["tokens_out"] == 3 and not first["stream"]
    assert "prompt" not in first and "answer" not in first  # contents only with log_content
    assert second["request_id"] == made and second["stream"] and second["provider"] == "second"
    assert second["failover"] is True and second["ttft_ms"] <= second["latency_ms"]
    attempts = [(x["request_id"], x["provider"], x["outcome"]) for x in got if x.get("event") == "attempt"]
    assert attempts == [("caller-42", "first", "ok"), (made, "first", "ProviderUnavailable"), (made, "second", "ok")]
    text = json.dumps(got)
    assert API_KEY not in text and UPSTREAM_KEY not in text


async def test_a_platform_event_carries_its_id_into_the_answer(tmp_path: Path, lines: list[dict[str, Any]]):
    async with FakeOpenAI(answer="it will rain") as up, FakeNAS() as nas:
        app = create_app(parse_config(config(tmp_path, up.base_url, nas.base, content=True), {}))
        async with serve_asgi(app) as url, httpx.AsyncClient() as c:
            body = form("bot_dm", text="rain tomorrow?", post_id="p1")
            ack = await c.post(
                f"{url}/hooks/nas",
                content=body,
                headers={"Content-Type": "application/x-www-form-urlencoded", "X-Request-Id": "nas-7"},
            )
            assert ack.status_code == 200 and ack.headers["x-request-id"] == "nas-7"
            for _ in range(250):
                if nas.sent and any(x.get("event") == "message" for x in read(lines)):
                    break
                await asyncio.sleep(0.02)
            form_type = {"Content-Type": "application/x-www-form-urlencoded"}
            again = await c.post(f"{url}/hooks/nas", content=body, headers=form_type)
            assert again.status_code == 200 and len(nas.sent) == 1  # a duplicate: not answered again
            metrics = (await c.get(f"{url}/metrics")).text
    assert 'switchboard_requests_total{channel="assist",door="nas",outcome="answered"} 1.0' in metrics
    assert 'switchboard_platform_duplicates_total{platform="nas"} 1.0' in metrics
    got = read(lines)
    hook = next(x for x in got if x.get("event") == "webhook")
    [message] = [x for x in got if x.get("event") == "message"]
    [attempt] = [x for x in got if x.get("event") == "attempt"]
    assert hook["request_id"] == message["request_id"] == attempt["request_id"] == "nas-7"
    assert (hook["platform"], hook["status"]) == ("nas", 200)
    assert (message["outcome"], message["channel"], message["provider"]) == ("answered", "assist", "first")
    assert message["tokens_in"] == 5 and message["tokens_out"] == 3
    assert (message["text"], message["answer"]) == ("rain tomorrow?", "it will rain")  # log_content: true
    assert BOT_TOKEN not in json.dumps(got)


async def test_retries_are_counted_per_provider(tmp_path: Path, lines: list[dict[str, Any]]):
    async with FakeOpenAI(answer="second time lucky") as up, FakeNAS() as nas:
        cfg = config(tmp_path, up.base_url, nas.base)
        cfg["failover"] = {"attempts": 2, "backoff_base": 0.01}
        app = create_app(parse_config(cfg, {}))
        async with serve_asgi(app) as url, httpx.AsyncClient() as c:
            up.fail(503)
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
            r = await client.chat.completions.create(model="assist", messages=HI)  # type: ignore[arg-type]
            assert r.choices[0].message.content == "second time lucky"
            metrics = (await c.get(f"{url}/metrics")).text
    assert 'switchboard_provider_retries_total{provider="first"} 1.0' in metrics
