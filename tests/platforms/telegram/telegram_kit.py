"""What the Telegram tests share: the app's config against a `FakeBotAPI`, the app served on
loopback, webhook posts with the secret token, and the bot's messages once they are final."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from proxy.app import create_app
from proxy.config import parse_config
from tests.platforms.telegram.fake_bot_api import TOKEN, FakeBotAPI
from tests.servers import serve_asgi

SECRET = "s3cret-token_1"


def config(tmp_path: Path, api: FakeBotAPI, delay: float = 0.0, **telegram: Any) -> dict[str, Any]:
    server = telegram.pop("server", {})
    return {
        "server": server,
        "store": {"url": f"sqlite:///{tmp_path}/t.db"},
        "providers": {"echo": {"kind": "echo", "delay": delay}},
        "platforms": {
            "tg": {
                "kind": "telegram",
                "bot_token": TOKEN,
                "api_base": api.base_url,
                "secret_token": SECRET,
                "update_interval": 0.05,
                "group_update_interval": 0.05,
                "poll_timeout": 1,
                **telegram,
            }
        },
        "channels": [{"name": "chat", "match": {"platform": "tg"}, "providers": ["echo"]}],
    }


@contextlib.asynccontextmanager
async def running(tmp_path: Path, api: FakeBotAPI, **kw: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(parse_config(config(tmp_path, api, **kw), {}))
    async with serve_asgi(app) as url, httpx.AsyncClient(base_url=url) as c:
        yield c


async def hook(c: httpx.AsyncClient, body: dict[str, Any], secret: str = SECRET) -> httpx.Response:
    return await c.post("/hooks/tg", json=body, headers={"X-Telegram-Bot-Api-Secret-Token": secret})


async def answered(api: FakeBotAPI, n: int, final: str | None = None) -> list[str]:
    """The texts of the bot's messages once `n` exist and none still ends with the cursor."""
    await api.wait(lambda: len(api.texts) >= n and not any(t.endswith("…") for t in api.texts.values()))
    if final is not None:
        await api.wait(lambda: final in api.texts.values())
    return api.sent()
