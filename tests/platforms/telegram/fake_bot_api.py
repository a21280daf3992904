"""A fake Telegram Bot API on loopback: getMe, getUpdates (long poll with offset confirmation,
409 while a webhook is set, the connection dropped on demand), setWebhook/deleteWebhook, and
sendMessage / editMessageText / sendPhoto recorded, with failures and 429s injected on demand."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from aiohttp import web

from tests.servers import serve_aiohttp

TOKEN = "123456:TEST-token_abcdefghijklmnopqrstuv"
BOT_ID, BOT_NAME = 777, "SwitchBot"


class FakeBotAPI:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.texts: dict[int, str] = {}  # message id -> its current text
        self.pending: list[dict[str, Any]] = []  # updates not confirmed yet
        self.webhook: str | None = None
        self.failures: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self.polls = 0
        self.longest_poll = 0.5  # seconds a long poll is held at most (Telegram: its `timeout`)
        self.unparsable = 0  # MarkdownV2 texts still to be refused as Telegram refuses a bad entity
        self.drops = 0  # getUpdates requests still to be cut off (the connection closed unanswered)
        self._ids = itertools.count(100)
        self._arrived = asyncio.Event()
        self.base_url = ""
        self._cm: Any = None

    async def __aenter__(self) -> FakeBotAPI:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._call)
        self._cm = serve_aiohttp(app)
        self.base_url = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._arrived.set()
        await self._cm.__aexit__(*exc)

    # -- test controls ---------------------------------------------------------------------------

    def push(self, *updates: dict[str, Any]) -> None:
        self.pending += updates
        self._arrived.set()

    def fail(self, method: str, status: int = 502, times: int = 1, retry_after: int | None = None) -> None:
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": f"injected {status}"}
        if retry_after is not None:
            body["parameters"] = {"retry_after": retry_after}
            body["description"] = f"Too Many Requests: retry after {retry_after}"
        self.failures.setdefault(method, []).extend([(status, body)] * times)

    def drop(self, times: int = 1) -> None:
        """Cut the next `times` polls off as they answer (a long poll in progress included): the
        offset they sent confirms as Telegram's would, then the connection is closed without an
        answer, so the updates they would have carried are lost on the way, still unconfirmed."""
        self.drops += times

    def of(self, method: str) -> list[dict[str, Any]]:
        return [b for m, b in self.calls if m == method]

    def sent(self) -> list[str]:
        """The final text of every message the bot sent, in order."""
        return [self.texts[mid] for mid in sorted(self.texts)]

    async def wait(self, check: Any, patience: float = 5.0) -> None:
        for _ in range(int(patience / 0.02)):
            if check():
                return
            await asyncio.sleep(0.02)

    # -- the API ---------------------------------------------------------------------------------

    async def _call(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != TOKEN:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        method = request.match_info["method"]
        body = await request.json() if request.can_read_body else {}
        self.calls.append((method, body))
        if body.get("parse_mode") == "MarkdownV2" and self.unparsable:
            self.unparsable -= 1
            bad = "Bad Request: can't parse entities: can't find end of the entity starting at byte offset 4"
            return web.json_response({"ok": False, "error_code": 400, "description": bad}, status=400)
        if self.failures.get(method):
            status, answer = self.failures[method].pop(0)
            return web.json_response(answer, status=status)
        if method == "getUpdates":
            return await self._updates(request, body)
        return web.json_response({"ok": True, "result": self._result(method, body)})

    def _result(self, method: str, body: dict[str, Any]) -> Any:
        if method == "getMe":
            return {"id": BOT_ID, "is_bot": True, "first_name": "Switch", "username": BOT_NAME}
        if method == "setWebhook":
            self.webhook = body["url"]
            return True
        if method == "deleteWebhook":
            self.webhook = None
            return True
        if method in ("sendMessage", "sendPhoto"):
            mid = next(self._ids)
            self.texts[mid] = body.get("text", f"[photo {body.get('photo')}]")
            return {"message_id": mid, "chat": {"id": body["chat_id"]}, "text": self.texts[mid]}
        if method == "editMessageText":
            self.texts[body["message_id"]] = body["text"]
            return {"message_id": body["message_id"], "text": body["text"]}
        return True

    async def _updates(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if self.webhook is not None:
            conflict = {
                "ok": False,
                "error_code": 409,
                "description": "Conflict: can't use getUpdates while webhook is active",
            }
            return web.json_response(conflict, status=409)
        self.polls += 1
        self._confirm(body)
        if not self.pending:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), min(float(body.get("timeout", 0)), self.longest_poll))
            except TimeoutError:
                pass
        if self.drops:
            self.drops -= 1
            assert request.transport is not None
            request.transport.close()  # what it would have carried is lost on the way
            return web.Response()
        return web.json_response({"ok": True, "result": list(self.pending)})

    def _confirm(self, body: dict[str, Any]) -> None:
        offset = body.get("offset")
        if offset is not None:  # confirms every update before it
            self.pending = [u for u in self.pending if u["update_id"] >= offset]


_update_ids = itertools.count(5000)
_message_ids = itertools.count(1)


def update(
    text: str | None = "hello",
    *,
    chat: int = 42,
    kind: str = "private",
    user: int = 42,
    is_bot: bool = False,
    update_id: int | None = None,
    **message: Any,
) -> dict[str, Any]:
    """An Update with one message, as Telegram sends it."""
    m: dict[str, Any] = {
        "message_id": next(_message_ids),
        "from": {"id": user, "is_bot": is_bot, "first_name": "Ana", "username": "ana"},
        "chat": {"id": chat, "type": kind},
        "date": 1700000000,
        **message,
    }
    if text is not None:
        m["text"] = text
    return {"update_id": next(_update_ids) if update_id is None else update_id, "message": m}


def mention(at: int = 0, name: str = BOT_NAME) -> list[dict[str, Any]]:
    """The entity Telegram sets on `@name` at `at` (UTF-16 offsets; ASCII here)."""
    return [{"type": "mention", "offset": at, "length": len(name) + 1}]
