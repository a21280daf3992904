"""Test kit for the WeCom adapters: a callback signer built on wechatpy's enterprise crypto (so
every callback the tests send is wechatpy's, and every reply we make is opened by wechatpy), a
fake WeCom API on loopback, and a provider whose answer the test releases piece by piece.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections import deque
from typing import Any, Literal

import orjson
from aiohttp import web
from wechatpy.crypto import _get_signature
from wechatpy.enterprise.crypto import PrpCrypto

from proxy.contracts import AdapterConfig, Provider, ProviderState
from proxy.types import ChatRequest, Delta
from tests.servers import serve_aiohttp

CORP_ID = "ww4f2a9c1e7b3d5086"
AGENT_ID = 1000002
SECRET = "Qm3vT8xLwB9sKp2ZrY6nHc4JdF7aGe1uVt5XoN0iLsE"
TOKEN = "sb_wecom_token_7d1e"
AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"  # 43 characters -> 32 bytes
USER = "ZhangSan"
BOT_ID = "aibc1f0e2d3c4b5a69"


def _key() -> bytes:
    return base64.b64decode(AES_KEY + "=")


class Signer:
    """Plays WeCom: encrypts for a receive id (the CorpID, or "" for the smart robot) and signs."""

    def __init__(self, receive_id: str) -> None:
        self.receive_id = receive_id

    def encrypt(self, plain: str, receive_id: str | None = None) -> str:
        rid = self.receive_id if receive_id is None else receive_id
        return PrpCrypto(_key()).encrypt(plain, rid).decode()

    def query(self, encrypted: str, *, ts: int | None = None, token: str = TOKEN) -> dict[str, str]:
        stamp, nonce = str(int(time.time()) if ts is None else ts), secrets.token_hex(5)
        return {"msg_signature": _get_signature(token, stamp, nonce, encrypted), "timestamp": stamp, "nonce": nonce}

    def verification(self, echo: str, **kw: Any) -> dict[str, str]:
        encrypted = self.encrypt(echo)
        return {**self.query(encrypted, **kw), "echostr": encrypted}

    def app_callback(self, inner_xml: str, **kw: Any) -> tuple[bytes, dict[str, str]]:
        """The self-built app's POST: `<xml><ToUserName/><AgentID/><Encrypt/></xml>` and its query."""
        encrypted = self.encrypt(inner_xml, kw.pop("receive_id", None))
        body = (
            f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><AgentID><![CDATA[{AGENT_ID}]]></AgentID>"
            f"<Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
        )
        return body.encode(), self.query(encrypted, **kw)

    def bot_callback(self, data: dict[str, Any], **kw: Any) -> tuple[bytes, dict[str, str]]:
        """The smart robot's POST: `{"encrypt": …}` and its query."""
        encrypted = self.encrypt(orjson.dumps(data).decode())
        return orjson.dumps({"encrypt": encrypted}), self.query(encrypted, **kw)


def open_reply(body: bytes, nonce: str) -> dict[str, Any]:
    """A smart robot reply, checked and decrypted with wechatpy: the plaintext JSON."""
    envelope = orjson.loads(body)
    assert set(envelope) == {"encrypt", "msgsignature", "timestamp", "nonce"}
    assert envelope["nonce"] == nonce and isinstance(envelope["timestamp"], int)
    expected = _get_signature(TOKEN, str(envelope["timestamp"]), nonce, envelope["encrypt"])
    assert envelope["msgsignature"] == expected
    result: dict[str, Any] = orjson.loads(PrpCrypto(_key()).decrypt(envelope["encrypt"], ""))
    return result


def app_text(content: str, msg_id: str, user: str = USER, **extra: str) -> str:
    fields = {"ToUserName": CORP_ID, "FromUserName": user, "CreateTime": str(int(time.time()))}
    fields |= {"MsgType": "text", "Content": content, "MsgId": msg_id, "AgentID": str(AGENT_ID), **extra}
    return xml(fields)


def app_message(msg_type: str, msg_id: str, user: str = USER, **extra: str) -> str:
    fields = {"ToUserName": CORP_ID, "FromUserName": user, "CreateTime": "1735000000", "MsgType": msg_type}
    return xml({**fields, "MsgId": msg_id, "AgentID": str(AGENT_ID), **extra})


def app_event(event: str, create_time: str, user: str = USER) -> str:
    fields = {"ToUserName": CORP_ID, "FromUserName": user, "CreateTime": create_time, "MsgType": "event"}
    return xml({**fields, "Event": event, "EventKey": "", "AgentID": str(AGENT_ID)})


def xml(fields: dict[str, str]) -> str:
    inner = "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items())
    return f"<xml>{inner}</xml>"


def bot_text(content: str, msgid: str, *, group: bool = False, response_url: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"msgid": msgid, "aibotid": BOT_ID, "chattype": "group" if group else "single"}
    data |= {"from": {"userid": USER}, "msgtype": "text", "text": {"content": content}}
    if group:
        data["chatid"] = "wrkSFfCgAAxxxxGroup"
    if response_url:
        data["response_url"] = response_url
    return data


def bot_refresh(stream_id: str, msgid: str) -> dict[str, Any]:
    return {
        "msgid": msgid,
        "aibotid": BOT_ID,
        "chattype": "single",
        "from": {"userid": USER},
        "msgtype": "stream",
        "stream": {"id": stream_id},
    }


class FakeWeCom:
    """`GET /cgi-bin/gettoken`, `POST /cgi-bin/message/send` and `POST /cgi-bin/aibot/response`,
    recording every call. `expire()` makes the tokens issued so far expired (errcode 42001, as
    WeCom answers); `send_errors` is a queue of errcodes the next sends answer with."""

    def __init__(self) -> None:
        self.token_calls: list[dict[str, str]] = []
        self.sends: list[dict[str, Any]] = []  # {"access_token", "json", "ok"}
        self.responses: list[dict[str, Any]] = []  # response_url posts: {"code", "json"}
        self.send_errors: deque[int] = deque()
        self.valid: set[str] = set()
        self.issued = 0
        self.base_url = ""
        self._cm: Any = None

    @property
    def texts(self) -> list[str]:
        return [s["json"]["text"]["content"] for s in self.sends if s["ok"]]

    def response_url(self, code: str) -> str:
        return f"{self.base_url}/cgi-bin/aibot/response?response_code={code}"

    def expire(self) -> None:
        self.valid.clear()

    async def __aenter__(self) -> FakeWeCom:
        app = web.Application()
        app.router.add_get("/cgi-bin/gettoken", self._token)
        app.router.add_post("/cgi-bin/message/send", self._send)
        app.router.add_post("/cgi-bin/aibot/response", self._response)
        self._cm = serve_aiohttp(app)
        self.base_url = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)

    async def _token(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self.token_calls.append(q)
        if q.get("corpid") != CORP_ID or q.get("corpsecret") != SECRET:
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})
        self.issued += 1
        token = f"ACCESS_TOKEN_{self.issued}"
        self.valid.add(token)
        return web.json_response({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200})

    async def _send(self, request: web.Request) -> web.Response:
        token = request.query.get("access_token", "")
        record: dict[str, Any] = {"access_token": token, "json": orjson.loads(await request.read()), "ok": False}
        self.sends.append(record)
        if self.send_errors:
            code = self.send_errors.popleft()
            return web.json_response({"errcode": code, "errmsg": f"fake error {code}"})
        if token not in self.valid:
            return web.json_response({"errcode": 42001, "errmsg": "access_token expired"})
        record["ok"] = True
        return web.json_response({"errcode": 0, "errmsg": "ok", "msgid": f"m{len(self.sends)}"})

    async def _response(self, request: web.Request) -> web.Response:
        self.responses.append({"code": request.query.get("response_code"), "json": orjson.loads(await request.read())})
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def wait_sends(self, n: int, timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.texts) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.texts

    async def wait_for(self, text: str, timeout: float = 5.0) -> list[str]:
        """Every text sent, once `text` is among them."""
        deadline = time.monotonic() + timeout
        while text not in self.texts and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert text in self.texts, self.texts
        return self.texts


class SteppedConfig(AdapterConfig):
    kind: Literal["stepped"] = "stepped"


class SteppedProvider(Provider):
    """Streams the pieces the test puts in `pieces` (None ends the answer); `calls` counts generations."""

    config_model = SteppedConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pieces: asyncio.Queue[str | None] = asyncio.Queue()
        self.calls: list[str] = []

    async def stream(self, request: ChatRequest, state: ProviderState) -> Any:
        self.calls.append(request.messages[-1].text())
        while (piece := await self.pieces.get()) is not None:
            yield Delta(text=piece)
        yield Delta(finish_reason="stop")
