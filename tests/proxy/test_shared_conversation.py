"""A conversation continues across instances: two `python -m proxy serve` processes on one
redis-server; the first turn is answered by one, the next by the other, which sends the upstream
the whole exchange."""

from __future__ import annotations

import uuid
from pathlib import Path

import openai

from tests.fakes.openai_upstream import FakeOpenAI
from tests.instances import serving

KEY = "sk-conv"


async def ask(url: str, text: str) -> str:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    r = await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": text}], extra_headers={"X-Conversation-Id": "trip"}
    )
    return r.choices[0].message.content or ""


async def test_the_next_turn_on_the_other_instance_has_the_history(redis_url: str, tmp_path: Path):
    async with FakeOpenAI(answer="Lisbon it is") as up:
        cfg = {
            "store": {"url": f"{redis_url}?prefix=c{uuid.uuid4().hex[:8]}"},
            "keys": [{"key": KEY}],
            "providers": {"main": {"kind": "openai", "base_url": up.base_url, "api_key": "sk-up"}},
            "channels": [{"name": "chat", "providers": ["main"], "prompt": "You plan trips."}],
        }
        async with serving(tmp_path, "a", cfg) as a, serving(tmp_path, "b", cfg) as b:
            assert await ask(a, "I want to go to Lisbon") == "Lisbon it is"
            up.answer = "three days"
            assert await ask(b, "for how long?") == "three days"
            up.answer = "in May"
            assert await ask(a, "when?") == "in May"
    sent = [(m["role"], m["content"]) for m in up.chat_requests()[-1].json["messages"]]
    assert sent == [
        ("system", "You plan trips."),
        ("user", "I want to go to Lisbon"),
        ("assistant", "Lisbon it is"),
        ("user", "for how long?"),
        ("assistant", "three days"),
        ("user", "when?"),
    ]
