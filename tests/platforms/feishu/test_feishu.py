"""Feishu/Lark through the real app: plain and encrypted events in, the exact API calls out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette

from proxy.app import create_app
from proxy.config import parse_config
from tests.platforms.feishu.feishu_kit import (
    APP_ID,
    APP_SECRET,
    KEY,
    Call,
    FakeFeishu,
    card_text,
    encrypted_body,
    lark_headers,
    payload,
    variant,
)
from tests.servers import serve_asgi

P2P = payload("text_p2p")
SOURCE = "om_dc13264520392913993dd051dba21dcf"


@pytest.fixture
async def rig(tmp_path):
    async with FakeFeishu() as api:

        def make(encrypt_key: str | None = None, stream: bool = False, delay: float = 0.0, **extra: Any) -> Starlette:
            platform = {
                "kind": "feishu",
                "app_id": APP_ID,
                "app_secret": APP_SECRET,
                "verification_token": "${FEISHU_TOKEN}",
                "encrypt_key": "${FEISHU_KEY:-}",
                "api_base": api.base,
                "stream": stream,
                "update_interval": 0.05,
                **extra,
            }
            env = {"FEISHU_TOKEN": "v-tok-8f4c2a9d1e", **({"FEISHU_KEY": encrypt_key} if encrypt_key else {})}
            return create_app(
                parse_config(
                    {
                        "store": {"url": f"sqlite:///{tmp_path}/f.db"},
                        "providers": {"echo": {"kind": "echo", "delay": delay}},
                        "platforms": {"lark": platform},
                        "channels": [{"name": "c", "match": {"platform": "lark"}, "providers": ["echo"]}],
                    },
                    env,
                )
            )

        yield api, make


async def until(check: Callable[[], bool], patience: float = 5.0) -> None:
    for _ in range(int(patience / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"waited {patience} s in vain")


async def replies(api: FakeFeishu, n: int) -> list[Call]:
    await until(lambda: len(api.replies) >= n)
    return api.replies


async def sentinel(
    c: httpx.AsyncClient, url: str, api: FakeFeishu, replies: int, n: int = 1, base: dict[str, Any] = P2P, key: str = ""
) -> list[Call]:
    """Send one more real message (`base`, the same chat, under new ids; encrypted and signed with
    `key`) and wait until its final answer arrived. Answers are started in the order their
    messages came in, so whatever an earlier event would have caused has happened by then:
    exactly `replies` replies, the sentinel's the last, prove nothing else was sent. Returns
    the replies that came before the sentinel's."""
    text, message_id = f"sentinel-{n}", f"om_sentinel_{n}"
    event = variant(base, f"ev-sentinel-{n}", message_id, text=text)
    body = encrypted_body(event, key) if key else orjson.dumps(event)
    r = await c.post(f"{url}/hooks/lark", content=body, headers=lark_headers(body, key) if key else {})
    assert (r.status_code, r.json()) == (200, {"msg": "success"})

    def final(call: Call) -> bool:  # a text reply, or its streamed card patched to the whole answer
        if call.refused or not isinstance(call.body, dict) or "content" not in call.body:
            return False
        content = call.content()
        return (content["text"] if "text" in content else card_text(call)).endswith(f"echo: {text}")

    await until(lambda: any(final(x) for x in api.calls))
    sent = api.replies
    ours = [x for x in sent if x.path == f"/open-apis/im/v1/messages/{message_id}/reply"]
    assert len(sent) == replies and ours and sent[-len(ours) :] == ours, [x.path for x in sent]
    return sent[: -len(ours)]


def texts(calls: list[Call]) -> list[str]:
    return [c.content()["text"] for c in calls]


async def test_url_verification_plain_and_encrypted(rig):
    api, make = rig
    challenge = payload("url_verification")
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        r = await c.post(f"{url}/hooks/lark", json=challenge)
        assert (r.status_code, r.json()) == (200, {"challenge": "ajls384kdjx98XX"})
        r = await c.post(f"{url}/hooks/lark", json={**challenge, "token": "forged"})
        assert (r.status_code, r.text) == (401, "unauthorized")
    async with serve_asgi(make(KEY)) as url, httpx.AsyncClient() as c:
        r = await c.post(f"{url}/hooks/lark", content=encrypted_body(challenge))
        assert r.json() == {"challenge": "ajls384kdjx98XX"}
        r = await c.post(f"{url}/hooks/lark", content=encrypted_body({**challenge, "token": "forged"}))
        assert r.status_code == 401
    assert api.replies == []


async def test_p2p_answered_once_duplicates_ignored_token_fetched_once(rig):
    api, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        for body in (
            P2P,
            P2P,  # Feishu's retry: same event_id
            variant(P2P, "ev-redelivered", SOURCE),  # same message under a new event id
            variant(P2P, "ev-2", "om_second", text="and Germany?"),
        ):
            r = await c.post(f"{url}/hooks/lark", json=body)
            assert (r.status_code, r.json()) == (200, {"msg": "success"})
        await replies(api, 2)
        sent = sorted(await sentinel(c, url, api, 3), key=lambda s: s.body["uuid"])
    assert texts(sent) == ["echo: What is the capital of France?", "echo: and Germany?"]
    assert [s.path for s in sent] == [
        f"/open-apis/im/v1/messages/{SOURCE}/reply",
        "/open-apis/im/v1/messages/om_second/reply",
    ]
    assert [(s.body["msg_type"], s.body["uuid"]) for s in sent] == [("text", f"{SOURCE}-0"), ("text", "om_second-0")]
    assert all(s.auth == "Bearer t-1" for s in api.calls) and api.token_fetches == 1  # bot info + 3 replies


async def test_group_needs_our_mention_and_app_senders_are_ignored(rig):
    api, make = rig
    group = payload("text_group_mention")
    not_us = variant(group, "ev-g2", "om_g2")
    not_us["event"]["message"]["mentions"] = group["event"]["message"]["mentions"][1:]
    from_app = variant(P2P, "ev-app", "om_app")
    from_app["event"]["sender"]["sender_type"] = "app"
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        for body in (group, not_us, from_app):
            assert (await c.post(f"{url}/hooks/lark", json=body)).status_code == 200
        await replies(api, 1)
        sent = await sentinel(c, url, api, 2, base=group)
    assert texts(sent) == ["echo: please summarise what @Grace wrote"]


async def test_bot_info_failure_is_tolerated(rig):
    api, make = rig
    api.bot_info_down = True
    group = payload("text_group_mention")
    group["event"]["message"]["mentions"] = []  # whatever reached us is for us now
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await c.post(f"{url}/hooks/lark", json=group)
        sent = await replies(api, 1)
    assert texts(sent) == ["echo: please summarise what wrote"]  # no names known: placeholders dropped


async def test_encrypted_signed_event_answered_tampering_refused(rig):
    api, make = rig
    async with serve_asgi(make(KEY)) as url, httpx.AsyncClient() as c:
        body = encrypted_body(P2P)
        good = lark_headers(body)
        assert (await c.post(f"{url}/hooks/lark", content=body, headers=good)).json() == {"msg": "success"}
        other = encrypted_body(variant(P2P, "ev-t", "om_t", text="tampered"))
        for content, headers in (
            (body, lark_headers(body, key="other-key")),
            (other, good),  # a signature from another body
            (body, lark_headers(body, ts=int(time.time()) - 600)),  # replayed 10 minutes later
            (other, {}),  # unsigned
        ):
            r = await c.post(f"{url}/hooks/lark", content=content, headers=headers)
            assert (r.status_code, r.text) == (401, "unauthorized")
        wrong_key = encrypted_body(variant(P2P, "ev-w", "om_w"), key="not-our-key")
        r = await c.post(f"{url}/hooks/lark", content=wrong_key, headers=lark_headers(wrong_key))
        assert r.status_code == 400 and "decrypt" in r.text
        await replies(api, 1)
        sent = await sentinel(c, url, api, 2, key=KEY)
    assert texts(sent) == ["echo: What is the capital of France?"]


async def test_plain_mode_forged_token_is_401(rig):
    api, make = rig
    forged = variant(P2P, "ev-f", "om_f")
    forged["header"]["token"] = "v-tok-forged"
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        assert (await c.post(f"{url}/hooks/lark", json=forged)).status_code == 401
        assert await sentinel(c, url, api, 1) == []


async def test_token_refreshed_once_on_invalid_token(rig):
    api, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await c.post(f"{url}/hooks/lark", json=P2P)
        await replies(api, 1)
        api.invalidate_next = True
        await c.post(f"{url}/hooks/lark", json=variant(P2P, "ev-2", "om_2", text="again"))
        sent = await replies(api, 2)
    assert texts(sent) == ["echo: What is the capital of France?", "echo: again"]
    refused = [x for x in api.calls if x.refused]
    assert [(x.path, x.auth) for x in refused] == [("/open-apis/im/v1/messages/om_2/reply", "Bearer t-1")]
    assert api.token_fetches == 2 and sent[-1].auth == "Bearer t-2"


async def test_non_text_message_gets_the_polite_answer(rig):
    api, make = rig
    async with serve_asgi(make()) as url, httpx.AsyncClient() as c:
        await c.post(f"{url}/hooks/lark", json=payload("image_p2p"))
        sent = await replies(api, 1)
    assert texts(sent) == ["抱歉，我目前只能阅读文字消息，请用文字发送你的问题。"]  # Feishu (not Lark): zh


async def test_long_answer_split_into_parts_with_their_own_uuid(rig):
    api, make = rig
    words = " ".join(f"w{i:03d}" for i in range(60))  # 299 characters, limit 120
    async with serve_asgi(make(text_limit=120)) as url, httpx.AsyncClient() as c:
        await c.post(f"{url}/hooks/lark", json=variant(P2P, "ev-l", "om_l", text=words))
        await replies(api, 3)
        sent = await sentinel(c, url, api, 4)
    assert len(sent) == 3 and " ".join(texts(sent)) == "echo: " + words
    assert [s.body["uuid"] for s in sent] == ["om_l-0", "om_l-1", "om_l-2"]


async def test_streaming_card_sent_early_then_patched_to_the_full_answer(rig):
    api, make = rig
    question = "one two three four five six"
    async with serve_asgi(make(stream=True, delay=0.08)) as url, httpx.AsyncClient() as c:
        await c.post(f"{url}/hooks/lark", json=variant(P2P, "ev-s", "om_s", text=question))
        await until(lambda: bool(api.of("PATCH")) and card_text(api.of("PATCH")[-1]) == "echo: " + question)
        (first,) = await sentinel(c, url, api, 2)
    assert (first.body["msg_type"], first.body["uuid"]) == ("interactive", "om_s-0")
    assert card_text(first).endswith(" ▍") and card_text(first) != "echo: " + question + " ▍"  # early, partial
    patches = [p for p in api.of("PATCH") if "sentinel" not in card_text(p)]
    assert {p.path for p in patches} == {"/open-apis/im/v1/messages/om_r2"}  # our card's id
    assert card_text(patches[-1]) == "echo: " + question and len(patches) <= 7  # one per word at most


async def test_final_card_update_refused_falls_back_to_a_text_reply(rig):
    api, make = rig
    api.fail_patches = 100
    async with serve_asgi(make(stream=True, delay=0.08)) as url, httpx.AsyncClient() as c:
        await c.post(f"{url}/hooks/lark", json=variant(P2P, "ev-x", "om_x", text="a b c"))
        await until(lambda: any(r.body["msg_type"] == "text" for r in api.replies))
        card, text = await sentinel(c, url, api, 4)  # its card and its fallback text reply
    assert card.body["msg_type"] == "interactive" and text.body["uuid"] == "om_x-0-final"
    assert text.content() == {"text": "echo: a b c"}


async def test_stream_false_sends_once_when_complete(rig):
    api, make = rig
    async with serve_asgi(make(stream=False, delay=0.05)) as url, httpx.AsyncClient() as c:
        await c.post(f"{url}/hooks/lark", json=variant(P2P, "ev-o", "om_o", text="x y z"))
        await replies(api, 1)
        sent = await sentinel(c, url, api, 2)
    assert texts(sent) == ["echo: x y z"] and api.of("PATCH") == [] and api.of("PUT") == []
    assert orjson.loads(sent[0].body["content"]) == {"text": "echo: x y z"}
