"""A crash loses no message: `kill -9` while an answer streams, restart on the same SQLite file.

Per platform (Slack, DingTalk, WeChat OA, Feishu, Synology), with and without the platform's
retry: a real `python -m proxy serve` process, a slow streaming fake upstream, the platform's fake
API, a validly signed webhook; once the upstream is streaming (and, where the platform shows one,
the placeholder or card is up) the process is killed with SIGKILL and started again. Exactly one
final answer must reach the fake platform (the placeholder edited into it), and the transcript
must hold the exchange once.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from tests.fakes.openai_upstream import FakeOpenAI
from tests.platforms.dingtalk import dingtalk_kit as ding
from tests.platforms.feishu import feishu_kit as lark
from tests.platforms.slack import slack_kit
from tests.platforms.slack.fake_slack import FakeSlack
from tests.platforms.synology.synology_kit import BOT_TOKEN, FakeNAS, form
from tests.platforms.wechat_mp import wechat_kit as wx
from tests.servers import free_port

ROOT = Path(__file__).parents[2]
ANSWER = "a slow answer that takes its time to arrive here in full"
PATIENCE = 30.0


async def until(check: Callable[[], bool], what: str, log: Path | None = None) -> None:
    for _ in range(int(PATIENCE / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}\n{tail(log)}")


def tail(log: Path | None) -> str:
    return log.read_text()[-3000:] if log is not None and log.exists() else ""


class Served:
    """`python -m proxy serve` in its own process, on a free loopback port."""

    def __init__(self, tmp: Path, platform: dict[str, Any], upstream: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = tmp / "s.db"
        self.log = tmp / "serve.log"
        self.config = tmp / "c.yaml"
        config = {
            "server": {"port": self.port, "claim_lease": 1, "drain_seconds": 2},
            "store": {"url": f"sqlite:///{self.db}"},
            "providers": {"up": {"kind": "openai", "base_url": upstream, "api_key": "sk-up", "model": "m"}},
            "platforms": {"p": platform},
            "channels": [{"name": "main", "providers": ["up"]}],
            "failover": {"attempts": 1},
        }
        self.config.write_text(yaml.safe_dump(config))
        self.proc: asyncio.subprocess.Process | None = None

    def _output(self) -> Any:
        return self.log.open("ab")

    async def start(self) -> None:
        with self._output() as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy", "serve", "--config", str(self.config), cwd=ROOT, stdout=out, stderr=out
            )
        async with httpx.AsyncClient() as c:
            for _ in range(int(PATIENCE / 0.05)):
                assert self.proc.returncode is None, tail(self.log)
                with contextlib.suppress(httpx.TransportError):
                    if (await c.get(f"{self.url}/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        raise AssertionError(f"switchboard did not start\n{tail(self.log)}")

    async def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: nothing runs on the way out
        await asyncio.wait_for(self.proc.wait(), 10)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()  # graceful: in-flight work is drained
            await asyncio.wait_for(self.proc.wait(), 20)

    def transcript(self) -> list[tuple[str, Any]]:
        with contextlib.closing(sqlite3.connect(self.db)) as db:
            rows = db.execute("SELECT body FROM messages ORDER BY id").fetchall()
            open_claims = db.execute("SELECT k FROM claims WHERE done = 0 AND payload IS NOT NULL").fetchall()
        assert open_claims == [], f"unsettled claims left: {open_claims}"
        return [(m["r"], m["c"]) for m in (orjson.loads(r[0]) for r in rows)]


@dataclass
class Case:
    """One platform: its config block, how to send the message (again), when to kill, and which
    final answers reached the fake platform."""

    platform: dict[str, Any]
    send: Callable[[httpx.AsyncClient, str, bool], Awaitable[Any]]
    ready_to_kill: Callable[[], bool]
    answers: Callable[[], list[str]]
    extra: Callable[[], list[str]] = lambda: []  # what else reached the user (must stay empty)


@contextlib.asynccontextmanager
async def slack_case() -> AsyncIterator[Case]:
    async with FakeSlack() as api:
        body = slack_kit.raw("message_im")

        async def send(c: httpx.AsyncClient, url: str, retry: bool) -> None:
            headers = {**slack_kit.sign(body), "content-type": "application/json"}
            if retry:
                headers |= {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
            assert (await c.post(f"{url}/hooks/p", content=body, headers=headers)).status_code == 200

        def answers() -> list[str]:
            """What each message we posted finally shows (the last edit of each)."""
            finals: dict[str, str] = {b["ts"]: b["text"] for b in api.of("chat.update")}
            posted = api.of("chat.postMessage")
            return [finals.get(f"1700000000.{i + 1:06d}", b["text"]) for i, b in enumerate(posted)]

        platform = {"kind": "slack", "signing_secret": slack_kit.SECRET, "bot_token": slack_kit.TOKEN}
        platform |= {"api_base": api.base_url, "update_interval": 0.1}
        yield Case(platform, send, lambda: bool(api.of("chat.update")), answers)


@contextlib.asynccontextmanager
async def dingtalk_case() -> AsyncIterator[Case]:
    async with ding.FakeWebhook() as hook:
        data = ding.payload("text_direct", sessionWebhook=hook.url)

        async def send(c: httpx.AsyncClient, url: str, retry: bool) -> None:
            r = await c.post(f"{url}/hooks/p", content=orjson.dumps(data), headers=ding.signed_headers())
            assert r.status_code == 200

        platform = {"kind": "dingtalk", "app_secret": ding.SECRET, "allow_insecure_webhook_hosts": ["127.0.0.1"]}
        yield Case(platform, send, lambda: True, lambda: [p["markdown"]["text"] for p in hook.posts])


@contextlib.asynccontextmanager
async def feishu_case() -> AsyncIterator[Case]:
    async with lark.FakeFeishu() as api:
        body = orjson.dumps(lark.payload("text_p2p"))

        async def send(c: httpx.AsyncClient, url: str, retry: bool) -> None:
            r = await c.post(f"{url}/hooks/p", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 200

        def answers() -> list[str]:
            cards = [r for r in api.replies if r.body["msg_type"] == "interactive"]
            finals = {c.path.rsplit("/", 1)[-1]: lark.card_text(c) for c in api.of("PATCH")}
            return [finals.get(f"om_r{api.calls.index(r) + 1}", lark.card_text(r)) for r in cards]

        platform = {"kind": "feishu", "app_id": lark.APP_ID, "app_secret": lark.APP_SECRET}
        platform |= {"verification_token": lark.TOKEN, "api_base": api.base, "update_interval": 0.1}
        texts = lambda: [r.content()["text"] for r in api.replies if r.body["msg_type"] == "text"]  # noqa: E731
        # a card update means its id was noted (the note follows the reply that creates the card)
        yield Case(platform, send, lambda: bool(api.of("PATCH")), answers, texts)


@contextlib.asynccontextmanager
async def synology_case() -> AsyncIterator[Case]:
    async with FakeNAS() as nas:
        body = form("bot_dm")

        async def send(c: httpx.AsyncClient, url: str, retry: bool) -> None:
            headers = {"content-type": "application/x-www-form-urlencoded"}
            assert (await c.post(f"{url}/hooks/p", content=body, headers=headers)).status_code == 200

        platform = {"kind": "synology", "token": BOT_TOKEN, "api_base": nas.base, "bot_token": BOT_TOKEN}
        yield Case(platform, send, lambda: True, lambda: [s["payload"]["text"] for s in nas.sent])


@contextlib.asynccontextmanager
async def wechat_case() -> AsyncIterator[Case]:
    async with wx.FakeWeChatAPI() as api:
        passive: list[str] = []
        body = wx.payload("text")

        async def send(c: httpx.AsyncClient, url: str, retry: bool) -> None:
            params = wx.signed_query(openid=wx.OPENID)
            try:
                r = await c.post(f"{url}/hooks/p", params=params, content=body, timeout=8)
            except httpx.TransportError:
                return  # the first delivery dies with the process
            if r.content not in (b"success", b""):
                passive.append(wx.fields(r.content)["Content"])

        platform = {"kind": "wechat_mp", "token": wx.TOKEN, "app_id": wx.APP_ID, "app_secret": wx.APP_SECRET}
        platform |= {"api_base": api.base_url, "reply_wait": 1, "hold_max": 4}
        yield Case(platform, send, lambda: True, lambda: passive + api.texts)


CASES = {
    "slack": slack_case,
    "dingtalk": dingtalk_case,
    "wechat_mp": wechat_case,
    "feishu": feishu_case,
    "synology": synology_case,
}


@pytest.mark.parametrize("retry", [False, True], ids=["no-retry", "retry"])
@pytest.mark.parametrize("kind", list(CASES))
async def test_kill_9_while_answering_loses_no_message(kind: str, retry: bool, tmp_path: Path):
    async with FakeOpenAI(answer=ANSWER, chunk_delay=0.1) as up, CASES[kind]() as case:
        served = Served(tmp_path, case.platform, up.base_url)
        await served.start()
        async with httpx.AsyncClient(timeout=10) as c:
            first = asyncio.create_task(case.send(c, served.url, False))
            try:
                await until(
                    lambda: bool(up.chat_requests()) and case.ready_to_kill(), "the answer to stream", served.log
                )
                await served.kill9()
                await first
                if kind in ("dingtalk", "synology", "wechat_mp"):  # these send the whole answer at the end
                    assert case.answers() == []
                else:  # a placeholder (Slack) or card (Feishu) shows the beginning of the answer
                    assert len(case.answers()) == 1 and ANSWER not in case.answers()
                await served.start()  # the same SQLite file
                if retry:
                    await case.send(c, served.url, True)
                await until(lambda: ANSWER in str(case.answers()), "the recovered answer", served.log)
            finally:
                first.cancel()
                await served.stop()
        assert case.answers() == [ANSWER], tail(served.log)
        assert case.extra() == []
        assert len(up.chat_requests()) == 2  # generated again once: nothing was finished before the kill
        transcript = served.transcript()
        assert [role for role, _ in transcript] == ["user", "assistant"], transcript
        assert transcript[1][1] == ANSWER
