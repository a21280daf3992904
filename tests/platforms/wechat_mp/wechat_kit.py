"""Test kit for the WeChat OA adapter: recorded payloads, signatures and safe-mode crypto written
here from the protocol description (independently of platforms/wechat_*), a fake WeChat API on
loopback, and a provider whose answer the test releases.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import struct
import time
import xml.etree.ElementTree as ET
from collections import deque
from pathlib import Path
from typing import Any, Literal

import orjson
from aiohttp import web
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from proxy.contracts import AdapterConfig, Provider, ProviderState
from proxy.types import ChatRequest, Delta
from tests.servers import serve_aiohttp

PAYLOADS = Path(__file__).parent / "payloads"
TOKEN = "sb_wechat_token_2f8c"
APP_ID = "wx5d1c0b9a8e7f6a41"
APP_SECRET = "9c2b7e0f5a4d3c1b8e6f0a2d4c6b8e0f"
AES_KEY = "BwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSY"  # 43 characters -> 32 bytes
OPENID = "oQ7Ld5Yk3xJm0aZr8bWq1uVt2sEc"
GH_ID = "gh_3f9a1c2b7d10"


def payload(name: str, **fields: str) -> bytes:
    """A recorded payload with some element values replaced (CDATA kept where it was)."""
    text = (PAYLOADS / f"{name}.xml").read_text(encoding="utf-8")
    for tag, value in fields.items():

        def put(m: re.Match[str], tag: str = tag, value: str = value) -> str:
            return f"<{tag}>{m.group(1) or ''}{value}{m.group(2) or ''}</{tag}>"

        text, n = re.subn(rf"<{tag}>(<!\[CDATA\[)?.*?(\]\]>)?</{tag}>", put, text, flags=re.S)
        assert n == 1, f"{name}.xml has no <{tag}>"
    return text.encode("utf-8")


def sha1_sorted(*values: str) -> str:
    return hashlib.sha1("".join(sorted(values)).encode()).hexdigest()


def signed_query(ts: int | None = None, nonce: str = "1469873523", token: str = TOKEN, **extra: str) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    return {"signature": sha1_sorted(token, stamp, nonce), "timestamp": stamp, "nonce": nonce, **extra}


# -- safe mode, written from the protocol description ------------------------------------------


def _key() -> bytes:
    return base64.b64decode(AES_KEY + "=")


def aes_encrypt(raw: bytes) -> str:
    """AES-256-CBC with IV = key[:16] over `raw` (already padded to the AES block)."""
    k = _key()
    enc = Cipher(algorithms.AES(k), modes.CBC(k[:16])).encryptor()
    return base64.b64encode(enc.update(raw) + enc.finalize()).decode()


def frame(message: bytes, app_id: str = APP_ID) -> bytes:
    """random16 || len (4 bytes, big-endian) || message || AppID."""
    return os.urandom(16) + struct.pack(">I", len(message)) + message + app_id.encode()


def encrypt(message: bytes, app_id: str = APP_ID) -> str:
    body = frame(message, app_id)
    pad = 32 - len(body) % 32  # PKCS#7 with a 32-byte block: 1..32
    return aes_encrypt(body + bytes([pad]) * pad)


def decrypt(encrypted: str) -> tuple[bytes, str]:
    k = _key()
    dec = Cipher(algorithms.AES(k), modes.CBC(k[:16])).decryptor()
    plain = dec.update(base64.b64decode(encrypted)) + dec.finalize()
    pad = plain[-1]
    assert 1 <= pad <= 32 and plain[-pad:] == bytes([pad]) * pad
    plain = plain[:-pad]
    (n,) = struct.unpack(">I", plain[16:20])
    return plain[20 : 20 + n], plain[20 + n :].decode()


def safe_body(inner: bytes, query: dict[str, str], app_id: str = APP_ID) -> tuple[bytes, dict[str, str]]:
    """The encrypted envelope of `inner` and the query with its msg_signature."""
    enc = encrypt(inner, app_id)
    body = (PAYLOADS / "safe_envelope.xml").read_text().replace("{encrypt}", enc).encode()
    sig = sha1_sorted(TOKEN, query["timestamp"], query["nonce"], enc)
    return body, {**query, "encrypt_type": "aes", "msg_signature": sig}


def fields(xml: bytes | str) -> dict[str, str]:
    """Our own reply XML (trusted) as a dict."""
    root = ET.fromstring(xml)
    assert root.tag == "xml"
    return {c.tag: c.text or "" for c in root}


# -- a fake WeChat API ------------------------------------------------------------------------


class FakeWeChatAPI:
    """`POST /cgi-bin/stable_token` and `POST /cgi-bin/message/custom/send`, recording every call.

    `send_errors` is a queue of errcodes the next sends answer with (40001 = token invalid);
    while `send_gate` is set to an unset event, sends are recorded and then held until it is set.
    """

    def __init__(self) -> None:
        self.token_calls: list[dict[str, Any]] = []
        self.sends: list[dict[str, Any]] = []  # {"access_token": ..., "json": ...}
        self.send_errors: deque[int] = deque()
        self.send_gate: asyncio.Event | None = None
        self.issued = 0
        self.base_url = ""
        self._cm: Any = None

    @property
    def texts(self) -> list[str]:
        return [s["json"]["text"]["content"] for s in self.sends if s["ok"]]

    async def __aenter__(self) -> FakeWeChatAPI:
        app = web.Application()
        app.router.add_post("/cgi-bin/stable_token", self._token)
        app.router.add_post("/cgi-bin/message/custom/send", self._send)
        self._cm = serve_aiohttp(app)
        self.base_url = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)

    async def _token(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.token_calls.append(body)
        if body.get("appid") != APP_ID or body.get("secret") != APP_SECRET:
            return web.json_response({"errcode": 40125, "errmsg": "invalid appsecret"})
        self.issued += 1
        return web.json_response({"access_token": f"ACCESS_TOKEN_{self.issued}", "expires_in": 7200})

    async def _send(self, request: web.Request) -> web.Response:
        token = request.query.get("access_token", "")
        record: dict[str, Any] = {"access_token": token, "json": orjson.loads(await request.read()), "ok": False}
        self.sends.append(record)
        if self.send_gate is not None:
            await self.send_gate.wait()
        if self.send_errors:
            code = self.send_errors.popleft()
            return web.json_response({"errcode": code, "errmsg": f"fake error {code}"})
        if token != f"ACCESS_TOKEN_{self.issued}":
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})
        record["ok"] = True
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def wait_sends(self, n: int, timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.texts) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.texts


# -- a provider whose answer the test releases -----------------------------------------------


class GatedConfig(AdapterConfig):
    kind: Literal["gated"] = "gated"


class GatedProvider(Provider):
    """Answers "gated: <text>" once `gate` is set; counts generations in `calls`."""

    config_model = GatedConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.calls: list[str] = []

    async def stream(self, request: ChatRequest, state: ProviderState) -> Any:
        text = request.messages[-1].text()
        self.calls.append(text)
        await self.gate.wait()
        yield Delta(text="gated: " + text)
        yield Delta(finish_reason="stop")
