"""The neutral upstream helpers: the SSE reader per the spec, fed the way the network feeds it."""

from __future__ import annotations

import aiohttp
import pytest

from providers.openai import OpenAIConfig, OpenAIProvider
from providers.upstream import DONE, UNPARSEABLE, JSONEvents
from proxy.engine import NO_STATE
from proxy.errors import BadResponse
from proxy.types import ChatRequest, Message
from tests.fakes.openai_upstream import FakeOpenAI


def decode(body: bytes, cut: int | None = None) -> list[object]:
    """Feed `body` in reads of `cut` bytes (all at once when None), then close."""
    events = JSONEvents()
    out: list[object] = []
    step = cut or max(1, len(body))
    for i in range(0, len(body), step):
        out += events.feed(body[i : i + step])
    return out + events.close()


CASES = [
    (b'data: {"a": 1}\n\n', [{"a": 1}]),
    (b'data:{"a":1}\n\ndata: [DONE]\n\n', [{"a": 1}, DONE]),
    # multi-line data: the lines joined with LF make one JSON value
    (b'data: {"a":\ndata: [1,\ndata: 2]}\n\n', [{"a": [1, 2]}]),
    # comments, retry/id/event fields, unknown fields ignored
    (b': keep-alive\nretry: 3000\nid: 7\nevent: message\nfoo: bar\ndata: {"b": 2}\n\n', [{"b": 2}]),
    # CRLF and lone CR line ends
    (b'data: {"c": 3}\r\n\r\ndata: {"d":\rdata: 4}\r\r', [{"c": 3}, {"d": 4}]),
    # a last event without its closing blank line, and without a final newline
    (b'data: {"e": 5}\n\ndata: {"f":\ndata: 6}', [{"e": 5}, {"f": 6}]),
    (b'data: {"g": 7}', [{"g": 7}]),
    # events of empty data carry nothing; `data` without a colon is an empty data line
    (b"data:\n\ndata\n\ndata: \n\n", []),
    (b"data\ndata: [1]\n\n", [[1]]),
    # servers that forget the blank line between events
    (b'data: {"h": 8}\ndata: {"i": 9}\n', [{"h": 8}, {"i": 9}]),
    # not JSON at all
    (b"data: <html>\n\n", [UNPARSEABLE]),
]


@pytest.mark.parametrize("body,expected", CASES)
@pytest.mark.parametrize("cut", [None, 1, 3, 7])
def test_events_per_the_spec_however_the_reads_fall(body, expected, cut):
    assert decode(body, cut) == expected


def test_a_complete_line_is_delivered_before_its_blank_line_arrives():
    events = JSONEvents()
    assert events.feed(b'data: {"now": true}\n') == [{"now": True}]  # not held until the next read
    assert events.feed(b"\n") == []


def test_no_line_length_limit():
    big = b'{"x": "' + b"y" * 300_000 + b'"}'
    assert decode(b"data: " + big + b"\n\n", 65_536) == [{"x": "y" * 300_000}]


REQ = ChatRequest((Message("user", "hi"),))


@pytest.mark.parametrize(
    "raw,text",
    [
        # one chunk split over data lines, a comment and a retry line between events
        (
            b': hi\nretry: 1000\ndata: {"choices":[{"delta":\ndata: {"content":"Hel"}}]}\n\n'
            b'data: {"choices":[{"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\ndata: [DONE]',
            "Hello",
        ),
        # the last chunk without its blank line and no [DONE]
        (b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {"choices":[{"delta":{"content":"b"}}]}', "ab"),
    ],
)
async def test_openai_stream_read_per_the_spec(raw, text):
    async with FakeOpenAI() as fake, aiohttp.ClientSession() as http:
        fake.raw_stream(raw)
        p = OpenAIProvider("gpt", OpenAIConfig(base_url=fake.base_url, api_key="sk-x"), http)
        assert "".join([d.text async for d in p.stream(REQ, NO_STATE)]) == text


async def test_text_before_a_broken_chunk_still_arrives():
    async with FakeOpenAI() as fake, aiohttp.ClientSession() as http:
        fake.raw_stream(b'data: {"choices":[{"delta":{"content":"kept"}}]}\n\ndata: {broken\n\n')
        p = OpenAIProvider("gpt", OpenAIConfig(base_url=fake.base_url, api_key="sk-x"), http)
        got: list[str] = []
        with pytest.raises(BadResponse):
            async for d in p.stream(REQ, NO_STATE):
                got.append(d.text)
        assert got == ["kept"]
