"""Slack Socket Mode through the real app: Switchboard opens the connection to a fake Socket Mode
gateway (a real WebSocket on loopback), which pushes envelopes, records acknowledgements and drops
the connection; the answers that reached the fake Web API are counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from slack_sdk.socket_mode.response import SocketModeResponse

from proxy.app import create_app
from proxy.config import parse_config
from tests.platforms.slack.fake_slack import FakeSlack
from tests.platforms.slack.slack_kit import APP_TOKEN, TOKEN, payload
from tests.servers import serve_asgi


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


def app(tmp_path: Path, slack: FakeSlack, delay: float = 0.0) -> Any:
    platform = {"kind": "slack", "app_token": APP_TOKEN, "bot_token": TOKEN, "api_base": slack.base_url}
    return create_app(
        parse_config(
            {
                "store": {"url": f"sqlite:///{tmp_path}/s.db"},
                "providers": {"echo": {"kind": "echo", "delay": delay}},
                "platforms": {"slack": {**platform, "update_interval": 0.05}},
                "channels": [
                    {"name": "eng", "match": {"platform": "slack"}, "providers": ["echo"], "session": "thread"}
                ],
            },
            {},
        )
    )


def envelope(n: int, event_id: str, text: str, **extra: Any) -> dict[str, Any]:
    event = payload("message_im", event_id=event_id, ts=f"17000001{n:02d}.000100", text=text)
    return {
        "envelope_id": f"env-{n}",
        "type": "events_api",
        "payload": event,
        "accepts_response_payload": False,
        **extra,
    }


async def finals(slack: FakeSlack, texts: list[str], patience: float = 10.0) -> list[str]:
    """Wait until each text's final answer was written; all final edits so far."""
    for _ in range(int(patience / 0.02)):
        done = [t for t in slack.texts("chat.update") if not t.endswith("…")]
        if all(any(d == f"echo: {t}" for d in done) for t in texts):
            return done
        await asyncio.sleep(0.02)
    raise AssertionError(f"answers missing; edits: {slack.texts('chat.update')}")


async def test_events_arrive_over_the_socket_and_are_answered_once(tmp_path, slack):
    async with serve_asgi(app(tmp_path, slack)) as url, httpx.AsyncClient() as c:
        assert await slack.wait_connections(1) == 1
        slack.push(envelope(1, "Ev0SOCK01", "first"))
        slack.push({**envelope(2, "Ev0SOCK01", "first"), "retry_attempt": 1})  # Slack sends it again
        slack.push(envelope(3, "Ev0SOCK03", "second"))
        acks = await slack.wait_acks(3)
        done = await finals(slack, ["first", "second"])
        ready = (await c.get(f"{url}/readyz")).json()
        metrics = (await c.get(f"{url}/metrics")).text
        hook = await c.post(f"{url}/hooks/slack", content=b"{}")  # no signing secret: no Request URL
    assert set(acks) == {"env-1", "env-2", "env-3"}  # every envelope acknowledged, the repeat too
    assert acks["env-1"] == SocketModeResponse(envelope_id="env-1").to_dict()  # as slack_sdk acknowledges
    assert sorted(done) == ["echo: first", "echo: second"]  # answered once each
    assert len(slack.of("chat.postMessage")) == 2
    assert ready["connections"] == {"slack": {"state": "connected", "reconnects": 0, "error": None}}
    assert 'switchboard_platform_connected{platform="slack"} 1.0' in metrics
    assert hook.status_code == 403


async def test_a_dropped_connection_is_made_again_and_nothing_is_lost_or_doubled(tmp_path, slack):
    async with serve_asgi(app(tmp_path, slack, delay=0.3)) as url, httpx.AsyncClient() as c:
        await slack.wait_connections(1)
        slack.push(envelope(1, "Ev0DROP01", "before the drop"))
        await slack.wait_acks(1)
        await slack.drop()  # mid-answer: the echo takes 0.3 s
        assert await slack.wait_connections(2) == 2
        slack.push(envelope(2, "Ev0DROP02", "after the drop"))
        slack.push({**envelope(3, "Ev0DROP01", "before the drop"), "retry_attempt": 1})  # redelivered
        slack.say_disconnect()  # Slack asks for a new connection
        assert await slack.wait_connections(3) == 3
        slack.push(envelope(4, "Ev0DROP04", "after the refresh"))
        await slack.wait_acks(4)
        done = await finals(slack, ["before the drop", "after the drop", "after the refresh"])
        ready = (await c.get(f"{url}/readyz")).json()
        metrics = (await c.get(f"{url}/metrics")).text
    assert sorted(done) == ["echo: after the drop", "echo: after the refresh", "echo: before the drop"]
    assert len(slack.of("chat.postMessage")) == 3
    assert ready["connections"]["slack"]["state"] == "connected"
    assert ready["connections"]["slack"]["reconnects"] == 2
    assert 'switchboard_platform_reconnects_total{platform="slack"} 2.0' in metrics


async def test_an_envelope_unacknowledged_when_the_process_stopped_is_answered_after_the_restart(tmp_path, slack):
    """Envelopes are acknowledged after they are claimed and submitted; one that was submitted
    and then cut off by a shutdown is answered by the next process (claims and recovery), and
    Slack's redelivery of it is not answered again."""
    async with serve_asgi(app(tmp_path, slack, delay=5)):
        await slack.wait_connections(1)
        slack.push(envelope(1, "Ev0STOP01", "slow one"))
        await slack.wait_acks(1)
    async with serve_asgi(app(tmp_path, slack)):
        await slack.wait_connections(2)
        slack.push({**envelope(2, "Ev0STOP01", "slow one"), "retry_attempt": 1})
        slack.push(envelope(3, "Ev0STOP03", "sentinel"))
        done = await finals(slack, ["slow one", "sentinel"])
    assert sorted(done) == ["echo: sentinel", "echo: slow one"]


@pytest.mark.parametrize(("token", "connected"), [(APP_TOKEN, True), ("xapp-1-wrong", False)])
async def test_check_live_opens_the_connection_once(tmp_path, slack, token, connected):
    """`switchboard check --live` opens each connection-mode platform's connection and closes it
    as soon as the platform accepts it (no event is read), and fails when it cannot."""
    import argparse
    import io

    import yaml

    from proxy.cli import check

    config = tmp_path / "c.yaml"
    platform = {"kind": "slack", "app_token": token, "bot_token": TOKEN, "api_base": slack.base_url}
    config.write_text(
        yaml.safe_dump(
            {
                "store": {"url": "memory://"},
                "providers": {"echo": {"kind": "echo"}},
                "platforms": {"slack": platform},
                "channels": [{"name": "eng", "providers": ["echo"]}],
            }
        )
    )
    out = io.StringIO()
    code = await asyncio.to_thread(check, argparse.Namespace(config=str(config), live=True), out)
    report = out.getvalue().split("platform connections, live")[1].split()  # e.g. [..., "slack", "connected"]
    line = " ".join(report[report.index("slack") : report.index("providers,")])
    if connected:
        assert code == 0 and line == "slack connected", out.getvalue()
        assert slack.connections == 1 and slack.acks == {}
    else:
        assert code == 1 and "not_allowed_token_type" in line, out.getvalue()
        assert slack.connections == 0
