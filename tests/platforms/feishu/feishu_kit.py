"""Shared pieces of the Feishu tests: recorded payloads, encryption and signatures computed here
from the documented scheme (not with the adapter's code), and a fake Feishu open API."""

from __future__ import annotations

import asyncio
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
    """A loopback Feishu open API: tenant token, bot info, reply, patch. Records every call.

    And the long connection: `POST /callback/ws/endpoint` (App ID and Secret checked) answers the
    URL of the fake's WebSocket (`service_id=77`, a 1-second ping interval), which sends the
    events `push_event(message_id, event, parts=n)` queues as protobuf frames built with the
    official SDK's generated classes (lark-oapi), split into `parts` frames when asked, records
    each response frame in `responses` (message_id -> decoded payload) and counts `pings`.
    `drop()` closes the connection; `connections` counts them. Events not answered when a
    connection ends are sent again on the next one."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.token_fetches = 0
        self.invalidate_next = False  # the next authorised call answers "invalid access token"
        self.fail_patches = 0  # the next N patches answer a frequency-limit error
        self.bot_info_down = False
        self.responses: dict[str, dict[str, Any]] = {}
        self.response_headers: dict[str, dict[str, str]] = {}
        self.pings = 0
        self.connections = 0
        self.unanswered: list[tuple[str, list[bytes]]] = []
        self._outbox: asyncio.Queue[tuple[str, list[bytes]]] = asyncio.Queue()
        self._ws: web.WebSocketResponse | None = None

    async def __aenter__(self) -> FakeFeishu:
        app = web.Application()
        app.router.add_post("/callback/ws/endpoint", self._endpoint)
        app.router.add_get("/ws", self._socket)
        app.router.add_route("*", "/{path:.*}", self._any)
        self._cm = serve_aiohttp(app)
        self.base = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)

    # -- the long connection -----------------------------------------------------------------

    def push_event(self, message_id: str, event: dict[str, Any], parts: int = 1) -> None:
        from lark_oapi.ws.pb.pbbp2_pb2 import Frame

        data = json.dumps(event).encode()
        size = -(-len(data) // parts)
        frames = []
        for seq in range(parts):
            f = Frame(SeqID=seq, LogID=0, service=77, method=1, payload=data[seq * size : (seq + 1) * size])
            for k, v in (("type", "event"), ("message_id", message_id), ("sum", str(parts)), ("seq", str(seq))):
                h = f.headers.add()
                h.key, h.value = k, v
            frames.append(f.SerializeToString())
        self._outbox.put_nowait((message_id, frames))

    async def drop(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def wait(self, what: str, n: int, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = getattr(self, what)
            if (len(value) if isinstance(value, dict) else value) >= n:
                break
            await asyncio.sleep(0.02)
        return getattr(self, what)

    async def _endpoint(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body != {"AppID": APP_ID, "AppSecret": APP_SECRET}:
            return web.json_response({"code": 514, "msg": "auth failed"})
        url = str(request.url.with_path("/ws").with_scheme("ws").with_query({"device_id": "d1", "service_id": "77"}))
        return web.json_response({"code": 0, "msg": "ok", "data": {"URL": url, "ClientConfig": {"PingInterval": 1}}})

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        from lark_oapi.ws.pb.pbbp2_pb2 import Frame

        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._ws = ws
        self.connections += 1
        for item in self.unanswered:
            self._outbox.put_nowait(item)
        self.unanswered = []

        async def sender() -> None:
            while True:
                message_id, frames = await self._outbox.get()
                self.unanswered.append((message_id, frames))
                for raw in frames:
                    await ws.send_bytes(raw)

        task = asyncio.create_task(sender())
        try:
            async for message in ws:
                frame = Frame()
                frame.ParseFromString(message.data)
                headers = {h.key: h.value for h in frame.headers}
                if frame.method == 0:
                    assert frame.service == 77 and headers["type"] == "ping"
                    self.pings += 1
                    continue
                self.responses[headers["message_id"]] = json.loads(frame.payload)
                self.response_headers[headers["message_id"]] = headers
                self.unanswered = [u for u in self.unanswered if u[0] != headers["message_id"]]
        finally:
            task.cancel()
            self._ws = None
        return ws

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
