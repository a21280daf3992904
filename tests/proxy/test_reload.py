"""Hot reload through `POST /admin/reload`, on a real server: admin keys, what changes at once,
what is kept (provider objects, open circuits), what is closed, and configs that are refused."""

from __future__ import annotations

import asyncio
import collections
import logging
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from providers.openai import OpenAIProvider
from proxy.app import create_app
from proxy.config import load_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import serve_asgi

ADMIN = "adm-secret-1"
API = "sk-api-1"


def write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def base_config(tmp_path: Path, main: FakeOpenAI, keep: FakeOpenAI, gone: FakeOpenAI) -> dict[str, Any]:
    return {
        "store": {"url": "memory://"},
        "keys": [{"key": API}],
        "admin": {"keys": [ADMIN]},
        "failover": {"attempts": 1, "circuit_failures": 2, "circuit_cooldown": 600},
        "providers": {
            "main": {"kind": "openai", "base_url": main.base_url, "api_key": "sk-up", "model": "m1"},
            "keep": {"kind": "openai", "base_url": keep.base_url, "api_key": "sk-up"},
            "gone": {"kind": "openai", "base_url": gone.base_url, "api_key": "sk-up"},
        },
        "channels": [
            {"name": "c", "providers": ["main"], "prompt": "prompt one"},
            {"name": "k", "providers": ["keep"]},
            {"name": "g", "providers": ["gone"]},
        ],
    }


def admin_post(url: str, key: str | None = ADMIN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/admin/reload", headers=headers, timeout=30)


async def apost(url: str, key: str = ADMIN) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as c:
        return await c.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {key}"})


def system_of(fake: FakeOpenAI) -> str:
    return next(m["content"] for m in fake.chat_requests()[-1].json["messages"] if m["role"] == "system")


@pytest.fixture
def closed(monkeypatch: pytest.MonkeyPatch) -> dict[str, asyncio.Event]:
    """Provider name -> an event set when an OpenAI provider of that name is closed."""
    events: dict[str, asyncio.Event] = collections.defaultdict(asyncio.Event)
    original = OpenAIProvider.close

    async def close(self: OpenAIProvider) -> None:
        events[self.name].set()
        await original(self)

    monkeypatch.setattr(OpenAIProvider, "close", close)
    return events


async def test_admin_is_closed_without_a_key_and_refuses_wrong_and_api_keys(tmp_path: Path):
    cfg = write(tmp_path / "c.yaml", {"store": {"url": "memory://"}, "keys": [{"key": API}]})
    async with serve_asgi(create_app(load_config(cfg))) as url:
        r = await asyncio.to_thread(admin_post, url)
        assert r.status_code == 403
        assert "admin" in r.json()["error"]["message"] and "SWITCHBOARD_ADMIN_KEY" in r.json()["error"]["message"]
    write(cfg, {"store": {"url": "memory://"}, "keys": [{"key": API}], "admin": {"keys": [ADMIN]}})
    async with serve_asgi(create_app(load_config(cfg))) as url:
        for key in ("wrong", API, None):
            r = await asyncio.to_thread(admin_post, url, key)
            assert r.status_code == 401, key
            assert r.json()["error"]["code"] == "invalid_admin_key"
        models = await asyncio.to_thread(httpx.get, f"{url}/v1/models", headers={"Authorization": f"Bearer {ADMIN}"})
        assert models.status_code == 401  # an admin key is not an API key
        assert (await asyncio.to_thread(admin_post, url)).status_code == 200


def test_an_unset_admin_key_leaves_admin_off_and_an_api_key_cannot_be_one(tmp_path: Path):
    cfg = write(tmp_path / "c.yaml", {"keys": [{"key": API}], "admin": {"keys": ["${NO_SUCH_ADMIN_KEY_SET}", ""]}})
    assert load_config(cfg, {}).raw.admin.keys == []
    write(cfg, {"keys": [{"key": API}], "admin": {"keys": [API]}})
    with pytest.raises(Exception, match=r"admin.keys\[0\]: is also an API key"):
        load_config(cfg, {})


async def test_reload_applies_changes_and_keeps_what_did_not_change(tmp_path: Path, closed):
    async with FakeOpenAI() as main, FakeOpenAI() as keep, FakeOpenAI() as gone:
        config = base_config(tmp_path, main, keep, gone)
        cfg = write(tmp_path / "c.yaml", config)
        app = create_app(load_config(cfg))
        async with serve_asgi(app) as url:
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API, max_retries=0)
            hi = [{"role": "user", "content": "hi"}]
            await client.chat.completions.create(model="c", messages=hi)
            assert system_of(main) == "prompt one"
            keep.fail(500, times=2)  # drive keep's circuit open with real failing requests
            for _ in range(2):
                with pytest.raises(openai.APIStatusError):
                    await client.chat.completions.create(model="k", messages=hi)
            engine = app.state.engine
            before = dict(engine.providers)
            circuit = engine.failover.circuits["keep"]
            assert circuit.report(0)[0] != "closed"

            config["channels"][0]["prompt"] = "prompt two"
            config["channels"] = [ch for ch in config["channels"] if ch["name"] != "g"]
            config["channels"].append({"name": "e", "providers": ["main"]})
            del config["providers"]["gone"]
            config["server"] = {"port": 9999, "log_level": "error"}
            write(cfg, config)
            level = logging.getLogger("switchboard").level
            r = await apost(url)
            applied_level = logging.getLogger("switchboard").level
            logging.getLogger("switchboard").setLevel(level)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["status"] == "reloaded"
            assert set(body["changed"]) == {
                "providers.gone (removed)",
                "channels.c (changed)",
                "channels.g (removed)",
                "channels.e (added)",
                "server.log_level",
            }
            assert body["needs_restart"] == ["server.port"]
            assert applied_level == logging.ERROR  # the log level reloads
            assert engine.settings.raw.server.port == 8080  # the running value stays

            await client.chat.completions.create(model="c", messages=hi)
            assert system_of(main) == "prompt two"
            models = {m.id async for m in client.models.list()}
            assert models == {"c", "k", "e"}
            await asyncio.wait_for(closed["gone"].wait(), 30)
            assert "gone" not in engine.providers
            assert engine.providers["main"] is before["main"] and engine.providers["keep"] is before["keep"]
            assert engine.failover.circuits["keep"] is circuit
            with pytest.raises(openai.APIStatusError) as refused:  # still open: the request is not even sent
                await client.chat.completions.create(model="k", messages=hi)
            assert refused.value.status_code == 503 and "circuit open: keep" in refused.value.message
            assert len(keep.chat_requests()) == 2
            metrics = (await asyncio.to_thread(httpx.get, f"{url}/metrics")).text
            assert 'switchboard_config_reloads_total{outcome="changed",trigger="admin"} 1.0' in metrics
            assert not closed["main"].is_set()


@pytest.mark.parametrize(
    ("edit", "where", "why"),
    [
        (lambda c: "channels: [oops", "c.yaml", "not valid YAML at line 1"),
        (lambda c: {**c, "chanels": []}, "chanels", "unknown key"),
        (lambda c: {**c, "keys": [{"key": "${SWITCHBOARD_TEST_UNSET_KEY}"}]}, "keys[0].key", "is not set"),
        (
            lambda c: {**c, "channels": [{**c["channels"][0], "history": -1}, *c["channels"][1:]]},
            "channels[0].history",
            "greater than or equal to 0",
        ),
    ],
    ids=["broken-yaml", "unknown-key", "missing-secret", "invalid-value"],
)
async def test_an_invalid_config_is_refused_and_the_running_one_stays(tmp_path: Path, edit, where, why):
    async with FakeOpenAI() as main, FakeOpenAI() as keep, FakeOpenAI() as gone:
        config = base_config(tmp_path, main, keep, gone)
        cfg = write(tmp_path / "c.yaml", config)
        app = create_app(load_config(cfg))
        async with serve_asgi(app) as url:
            new = edit(config)
            cfg.write_text(new if isinstance(new, str) else yaml.safe_dump(new))
            r = await apost(url)
            assert r.status_code == 400
            body = r.json()
            assert body["status"] == "failed" and where in body["error"] and why in body["error"], body
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API, max_retries=0)
            await client.chat.completions.create(model="c", messages=[{"role": "user", "content": "hi"}])
            assert system_of(main) == "prompt one"
            metrics = (await asyncio.to_thread(httpx.get, f"{url}/metrics")).text
            assert 'switchboard_config_reloads_total{outcome="failed",trigger="admin"} 1.0' in metrics


async def test_a_stream_in_flight_finishes_on_the_config_it_started_on(tmp_path: Path, closed):
    async with FakeOpenAI() as main, FakeOpenAI() as keep, FakeOpenAI() as gone:
        config = base_config(tmp_path, main, keep, gone)
        cfg = write(tmp_path / "c.yaml", config)
        app = create_app(load_config(cfg))
        async with serve_asgi(app) as url:
            main.stall_after(1, 1.0)  # the upstream pauses mid-answer: the reload happens then
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API, max_retries=0)
            stream = await client.chat.completions.create(
                model="c", messages=[{"role": "user", "content": "one two three"}], stream=True
            )
            pieces = []
            async for chunk in stream:
                pieces.append(chunk.choices[0].delta.content or "")
                if len(pieces) == 2:  # the role chunk and the first word are here
                    config["channels"][0]["prompt"] = "prompt two"
                    config["providers"]["main"]["model"] = "m2"  # main is replaced, not kept
                    write(cfg, config)
                    r = await apost(url)
                    assert r.status_code == 200 and "providers.main (changed)" in r.json()["changed"]
                    assert not closed["main"].is_set()  # still answering
            assert "".join(pieces) == "upstream: one two three"
            assert system_of(main) == "prompt one"
            await asyncio.wait_for(closed["main"].wait(), 30)  # closed once the answer ended
            await client.chat.completions.create(model="c", messages=[{"role": "user", "content": "again"}])
            last = main.chat_requests()[-1].json
            assert last["model"] == "m2" and system_of(main) == "prompt two"
