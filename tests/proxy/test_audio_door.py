"""POST /v1/audio/transcriptions through the real app: a multipart upload from the official
`openai` SDK, passed on to fake OpenAI-compatible transcription APIs."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from proxy.app import create_app
from proxy.config import parse_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import serve_asgi

KEY = "sk-audio-caller"
AUDIO = b"RIFF" + bytes(range(256)) * 40  # 10 KB standing in for a WAV file


def config(first: str, second: str, upload: int = 26_214_400) -> dict[str, Any]:
    return {
        "server": {"max_upload_bytes": upload},
        "store": {"url": "memory://"},
        "keys": [{"key": KEY}],
        "failover": {"attempts": 1},
        "providers": {
            "echo": {"kind": "echo"},
            "first": {"kind": "openai", "base_url": first, "api_key": "sk-1", "transcription_model": "whisper-1"},
            "second": {"kind": "openai", "base_url": second, "api_key": "sk-2", "transcription_model": "whisper-1"},
        },
        "channels": [
            {"name": "hear", "providers": ["echo", "first", "second"]},
            {"name": "chat-only", "providers": ["echo"]},
        ],
    }


@pytest.fixture
async def rig() -> AsyncIterator[tuple[FakeOpenAI, FakeOpenAI, str]]:
    async with FakeOpenAI() as a, FakeOpenAI() as b:
        async with serve_asgi(create_app(parse_config(config(a.base_url, b.base_url), {}))) as url:
            yield a, b, url


def uploads(fake: FakeOpenAI) -> list[Any]:
    return [r.json for r in fake.requests if r.path.endswith("/audio/transcriptions")]


async def test_a_file_is_transcribed_with_the_sdk(rig):
    first, _, url = rig
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    result = await client.audio.transcriptions.create(
        model="hear", file=("note.wav", AUDIO, "audio/wav"), language="de", prompt="names: Ada"
    )
    assert result.text == f"heard {len(AUDIO)} bytes of note.wav"
    (sent,) = uploads(first)
    assert sent["file"] == {"filename": "note.wav", "content_type": "audio/wav", "size": len(AUDIO)}
    assert (sent["model"], sent["language"], sent["prompt"]) == ("whisper-1", "de", "names: Ada")


async def test_text_format_and_failover(rig):
    first, second, url = rig
    first.fail(500)
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    text = await client.audio.transcriptions.create(model="hear", file=io.BytesIO(AUDIO), response_format="text")
    assert str(text).strip().startswith(f"heard {len(AUDIO)} bytes of")
    assert len(uploads(second)) == 1


@pytest.mark.parametrize(
    ("form", "files", "status", "param"),
    [
        ({"model": "chat-only"}, {"file": ("a.wav", AUDIO)}, 400, "model"),
        ({}, {"model": (None, "hear")}, 400, "file"),  # multipart, without a file
        ({"model": "hear", "response_format": "mp3"}, {"file": ("a.wav", AUDIO)}, 400, "response_format"),
        ({"model": "hear", "speed": "2"}, {"file": ("a.wav", AUDIO)}, 400, "speed"),
        ({"model": "nope"}, {"file": ("a.wav", AUDIO)}, 404, "model"),
    ],
)
async def test_bad_uploads_get_a_clear_error(rig, form, files, status, param):
    first, second, url = rig
    async with httpx.AsyncClient() as c:
        r = await c.post(
            f"{url}/v1/audio/transcriptions", data=form, files=files, headers={"authorization": f"Bearer {KEY}"}
        )
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param
    assert uploads(first) == uploads(second) == []


async def test_json_is_refused_and_a_large_upload_is_a_413():
    async with FakeOpenAI() as a, FakeOpenAI() as b:
        async with serve_asgi(create_app(parse_config(config(a.base_url, b.base_url, upload=4096), {}))) as url:
            async with httpx.AsyncClient() as c:
                auth = {"authorization": f"Bearer {KEY}"}
                not_form = await c.post(f"{url}/v1/audio/transcriptions", json={"model": "hear"}, headers=auth)
                big = await c.post(
                    f"{url}/v1/audio/transcriptions",
                    data={"model": "hear"},
                    files={"file": ("a.wav", AUDIO)},
                    headers=auth,
                )
    assert not_form.status_code == 400 and "multipart/form-data" in not_form.json()["error"]["message"]
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    assert uploads(a) == uploads(b) == []
