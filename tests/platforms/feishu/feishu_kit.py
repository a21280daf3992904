"""Shared pieces of the Feishu tests: recorded payloads, encryption and signatures computed here
from the documented scheme (not with the adapter's code), and a fake Feishu open API."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tests.servers import serve_aiohttp

PAYLOADS = Path(__file__).parent / "payloads"
TOKEN = "v-tok-8f4c2a9d1e"  # the Verification Token in the recorded payloads
KEY = "kZ3x9Qe7LmP2"  # an Encrypt Key
APP_ID, APP_SECRET = "cli_a5f0c7e3b2d1", "app-secret-77"
BOT = "ou_bot5f0c7e3b2d1a9e8f7c6b5a4d3e2f1"  # the bot's open_id in the recorded mentions


def payload(name: str, **message: Any) -> dict[str, Any]:
    """A recorded event; keyword arguments override fields of `event.message`."""
    body = json.loads((PAYLOADS / f"{name}.json").read_text())
    if message:
        body["event"]["message"].update(message)
    return body


def variant(body: dict[str, Any], event_id: str, message_id: str, text: str | None = None) -> dict[str, Any]:
    """The same event with other ids (and text), as a new user message."""
    out = copy.deepcopy(body)
    out["header"]["event_id"] = event_id
    out["event"]["message"]["message_id"] = message_id
    if text is not None:
        out["event"]["message"]["content"] = orjson.dumps({"text": text}).decode()
    return out


def lark_encrypt(key: str, plaintext: bytes, iv: bytes | None = None) -> str:
    """What Feishu does: AES-256-CBC with key SHA-256(encrypt_key), a random IV in front,
    PKCS#7 padding, base64."""
    pad = 16 - len(plaintext) % 16
    iv = iv or os.urandom(16)
    enc = Cipher(algorithms.AES(hashlib.sha256(key.encode()).digest()), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + enc.update(plaintext + bytes([pad]) * pad) + enc.finalize()).decode()


def encrypted_body(event: dict[str, Any], key: str = KEY) -> bytes:
    return orjson.dumps({"encrypt": lark_encrypt(key, orjson.dumps(event))})


def lark_headers(body: bytes, key: str = KEY, ts: int | None = None, nonce: str = "13246587") -> dict[str, str]:
    """The headers Feishu signs an event with: hex SHA-256(timestamp + nonce + key + raw body)."""
    stamp = str(int(time.time()) if ts is None else ts)
    sig = hashlib.sha256(stamp.encode() + nonce.encode() + key.encode() + body).hexdigest()
    return {
        "X-Lark-Request-Timestamp": stamp,
        "X-Lark-Request-Nonce": nonce,
        "X-Lark-Signature": sig,
        "Content-Type": "application/json",
    }


@dataclass
class Call:
    method: str
    path: str
    body: Any
    auth: str | None
    refused: bool = False

    def content(self) -> Any:
        """The JSON-encoded `content` string of a reply/patch, decoded."""
        return orjson.loads(self.body["content"])


def card_text(call: Call) -> str:
    card = call.content()
    assert card["config"]["update_multi"] is True
    (element,) = card["elements"]
    return str(element["content"])


class FakeFeishu:
    """A loopback Feishu open API: tenant token, bot info, reply, patch. Records every call."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.token_fetches = 0
        self.invalidate_next = False  # the next authorised call answers "invalid access token"
        self.fail_patches = 0  # the next N patches answer a frequency-limit error
        self.bot_info_down = False

    async def __aenter__(self) -> FakeFeishu:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._any)
        self._cm = serve_aiohttp(app)
        self.base = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)

    def of(self, method: str, suffix: str = "") -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path.endswith(suffix) and not c.refused]

    @property
    def replies(self) -> list[Call]:
        return self.of("POST", "/reply")

    async def _any(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        if request.path == "/open-apis/auth/v3/tenant_access_token/internal":
            assert body == {"app_id": APP_ID, "app_secret": APP_SECRET}
            self.token_fetches += 1
            token = f"t-{self.token_fetches}"
            return web.json_response({"code": 0, "msg": "ok", "tenant_access_token": token, "expire": 7200})
        call = Call(request.method, request.path, body, request.headers.get("Authorization"))
        self.calls.append(call)
        if call.auth != f"Bearer t-{self.token_fetches}" or self.invalidate_next:
            self.invalidate_next, call.refused = False, True
            return web.json_response({"code": 99991663, "msg": "Invalid access token for authorization."}, status=400)
        if request.path == "/open-apis/bot/v3/info":
            if self.bot_info_down:
                return web.json_response({"code": 10003, "msg": "service unavailable"}, status=500)
            return web.json_response({"code": 0, "msg": "ok", "bot": {"open_id": BOT, "app_name": "Switchboard"}})
        if request.path.endswith("/reply"):
            return web.json_response({"code": 0, "msg": "success", "data": {"message_id": f"om_r{len(self.calls)}"}})
        if request.method == "PATCH" and self.fail_patches:
            self.fail_patches, call.refused = self.fail_patches - 1, True
            return web.json_response(
                {"code": 230020, "msg": "This operation triggers the frequency limit."}, status=400
            )
        return web.json_response({"code": 0, "msg": "success", "data": {}})
