"""A crash loses no Discord message and answers none twice: `python -m proxy serve` in a process
of its own is killed with SIGKILL while an answer streams into its message, and started again on
the same SQLite file. The new process identifies afresh (a dead process's session is gone), takes
the unfinished message over and edits the message the dead one had posted (its id was noted)
instead of posting a second; Discord delivering the message again changes nothing."""

from __future__ import annotations

from pathlib import Path

from tests.fakes.openai_upstream import FakeOpenAI
from tests.platforms.discord.fake_discord import TOKEN, FakeDiscord, message
from tests.proxy.test_crash_recovery import Served, tail, until

ANSWER = "a slow answer that takes its time to arrive here in full"


async def test_kill_9_mid_answer_then_restart_edits_the_same_message(tmp_path: Path):
    question = message("tell me slowly", mid="3900")
    async with FakeOpenAI(answer=ANSWER, chunk_delay=0.06) as up, FakeDiscord() as fake:
        platform = {"kind": "discord", "bot_token": TOKEN, "api_base": fake.api, "update_interval": 0.1}
        served = Served(tmp_path, platform, up.base_url)
        await served.start()
        try:
            await fake.connected()
            await fake.dispatch("MESSAGE_CREATE", question)
            await until(lambda: bool(fake.of("PATCH")), "the answer to stream", served.log)
            await served.kill9()
            [(mid, shown)] = fake.texts.items()
            assert ANSWER not in shown  # cut off mid-answer
            await served.start()
            await until(lambda: len(fake.identifies) == 2, "a fresh session", served.log)
            await fake.dispatch("MESSAGE_CREATE", question)  # delivered again: not a new question
            await until(lambda: fake.texts[mid] == ANSWER, "the recovered answer", served.log)
        finally:
            await served.stop()
    assert fake.texts == {mid: ANSWER}, tail(served.log)
    assert len(fake.of("POST", "/channels/")) == 1  # edited, never posted anew
    assert len(up.chat_requests()) == 2  # generated again once: nothing was finished before the kill
    assert [role for role, _ in served.transcript()] == ["user", "assistant"]
