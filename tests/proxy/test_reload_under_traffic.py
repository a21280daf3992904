"""Reloads while traffic flows: OpenAI requests (streamed and not) and Slack events keep going
through three reloads (a prompt, a rebuilt provider, the platform's own block), and every request
succeeds and every event is answered exactly once, on whichever config it started on."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from proxy.app import create_app
from proxy.config import load_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.platforms.slack.fake_slack import FakeSlack
from tests.platforms.slack.slack_kit import SECRET, TOKEN, raw, sign
from tests.servers import serve_asgi

ADMIN, KEY = "adm-traffic", "sk-traffic"


def config(upstream: str, slack_api: str, tmp: Path) -> dict[str, Any]:
    return {
        "store": {"url": f"sqlite:///{tmp}/s.db"},
        "keys": [{"key": KEY}],
        "admin": {"keys": [ADMIN]},
        "providers": {"up": {"kind": "openai", "base_url": upstream, "api_key": "sk-up"}},
        "platforms": {"slack": {"kind": "slack", "signing_secret": SECRET, "bot_token": TOKEN, "api_base": slack_api}},
        "channels": [{"name": "chat", "providers": ["up"], "prompt": "version 0", "history": 0}],
    }


async def test_traffic_through_three_reloads_loses_and_doubles_nothing(tmp_path: Path):
    async with FakeOpenAI(answer="steady") as up, FakeSlack() as slack:
        cfg = config(up.base_url, slack.base_url, tmp_path)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        app = create_app(load_config(path))
        async with serve_asgi(app) as url, httpx.AsyncClient(timeout=30) as c:
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
            stop = asyncio.Event()
            failures: list[str] = []
            sent_events: list[str] = []

            async def api_traffic(stream: bool) -> int:
                n = 0
                while not stop.is_set():
                    try:
                        if stream:
                            chunks = await client.chat.completions.create(
                                model="chat", messages=[{"role": "user", "content": "hi"}], stream=True
                            )
                            text = "".join([ch.choices[0].delta.content or "" async for ch in chunks if ch.choices])
                        else:
                            r = await client.chat.completions.create(
                                model="chat", messages=[{"role": "user", "content": "hi"}]
                            )
                            text = r.choices[0].message.content or ""
                        if text != "steady":
                            failures.append(f"answer {text!r}")
                    except openai.OpenAIError as e:
                        failures.append(repr(e))
                    n += 1
                return n

            async def slack_traffic() -> None:
                i = 0
                while not stop.is_set():
                    i += 1
                    ts = f"1700001000.{i:06d}"
                    body = raw("message_im", event_id=f"EvTRAFFIC{i:04d}", ts=ts, text=f"q{i}")
                    r = await c.post(
                        f"{url}/hooks/slack", content=body, headers={"Content-Type": "application/json", **sign(body)}
                    )
                    if r.status_code != 200:
                        failures.append(f"hook {r.status_code}")
                    sent_events.append(ts)
                    await asyncio.sleep(0.02)

            tasks = [asyncio.create_task(api_traffic(s)) for s in (False, True, False, True)]
            tasks.append(asyncio.create_task(slack_traffic()))
            changes = [
                lambda d: d["channels"][0].update(prompt="version 1"),
                lambda d: d["providers"]["up"].update(read_timeout=99),  # rebuilt
                lambda d: d["platforms"]["slack"].update(update_interval=0.5),  # the platform rebuilt
            ]
            for edit in changes:
                await asyncio.sleep(0.3)
                edit(cfg)
                path.write_text(yaml.safe_dump(cfg))
                r = await c.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
                assert r.status_code == 200 and r.json()["status"] == "reloaded", r.text
            await asyncio.sleep(0.3)
            stop.set()
            done = await asyncio.gather(*tasks)
            for _ in range(500):  # every event's answer: a final edit of its placeholder
                if len(finals(slack)) >= len(sent_events):
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
    assert failures == []
    assert sum(n for n in done if n) > 20
    assert sorted(finals(slack)) == sorted(sent_events)  # each event answered once, none lost
    prompts = {r.json["messages"][0]["content"] for r in up.chat_requests()}
    assert prompts >= {"version 0", "version 1"}  # requests ran on both configs


def finals(slack: FakeSlack) -> list[str]:
    """The thread of each final answer: a chat.update of a placeholder not ending in " …". The
    fake numbers the messages it posts: 1700000000.000001, .000002, ..."""
    placeholders: dict[str, str] = {}
    for method, body in slack.calls:
        if method == "chat.postMessage":
            placeholders[f"1700000000.{len(placeholders) + 1:06d}"] = body["thread_ts"]
    return [
        placeholders[b["ts"]]
        for m, b in slack.calls
        if m == "chat.update" and not b["text"].endswith(" …") and b["ts"] in placeholders
    ]
