"""What the Discord tests share: the app's config against a `FakeDiscord` (and, when given, a
fake OpenAI upstream instead of echo), the app served on loopback, the bot's final messages,
and interactions signed with PyNaCl (not the `cryptography` our check uses)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
from nacl.signing import SigningKey

from proxy.app import create_app
from proxy.config import parse_config
from tests.platforms.discord.fake_discord import APP, TOKEN, FakeDiscord
from tests.servers import serve_asgi

SIGNER = SigningKey(bytes(range(32)))
PUBLIC_KEY = SIGNER.verify_key.encode().hex()


def config(tmp_path: Path, fake: FakeDiscord, upstream: str | None = None, **discord: Any) -> dict[str, Any]:
    provider = {"kind": "openai", "base_url": upstream, "api_key": "sk-up", "model": "m"} if upstream else None
    block = {"kind": "discord", "bot_token": TOKEN, "application_id": APP, "public_key": PUBLIC_KEY,
             "api_base": fake.api, "update_interval": 0.05}  # fmt: skip
    return {
        "store": {"url": f"sqlite:///{tmp_path}/d.db"},
        "providers": {"up": provider or {"kind": "echo", "delay": discord.pop("delay", 0.0)}},
        "platforms": {"dc": {**block, **discord}},
        "channels": [{"name": "chat", "match": {"platform": "dc"}, "providers": ["up"]}],
        "failover": {"attempts": 1},
    }


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, fake: FakeDiscord, upstream: str | None = None, **discord: Any
) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_asgi(create_app(parse_config(config(tmp_path, fake, upstream, **discord), {}))) as url:
        async with httpx.AsyncClient(base_url=url) as c:
            yield c


async def answers(fake: FakeDiscord, *finals: str) -> list[str]:
    """The bot's messages once each of `finals` is one of them (and nothing still streams)."""
    await fake.wait(
        lambda: all(f in fake.texts.values() for f in finals) and not any(t.endswith("…") for t in fake.texts.values())
    )
    return [fake.texts[k] for k in sorted(fake.texts)]


def signed(body: dict[str, Any], ts: int | None = None, signer: SigningKey = SIGNER) -> tuple[bytes, dict[str, str]]:
    raw = orjson.dumps(body)
    stamp = str(int(time.time()) if ts is None else ts)
    signature = signer.sign(stamp.encode() + raw).signature.hex()
    return raw, {"X-Signature-Ed25519": signature, "X-Signature-Timestamp": stamp, "Content-Type": "application/json"}


def ask(question: str, iid: str = "8001", token: str = "interaction-token-xyz") -> dict[str, Any]:
    return {
        "type": 2, "id": iid, "application_id": APP, "token": token, "channel_id": "4000", "guild_id": "5000",
        "member": {"user": {"id": "2100", "username": "ana"}},
        "data": {"name": "ask", "type": 1, "options": [{"name": "question", "type": 3, "value": question}]},
    }  # fmt: skip
