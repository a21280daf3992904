"""Log lines as operators read them: text or one JSON object per line, written by a thread of
their own (a stream that blocks does not stall the caller), nothing lost at exit."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest

from proxy import logs


@pytest.fixture
def captured():
    out = io.StringIO()
    before = logging.getLogger("switchboard").level
    yield out
    logs.stop()  # also takes our handler off the root logger
    logging.getLogger("switchboard").setLevel(before)


def test_json_lines_carry_the_event_and_its_fields(captured: io.StringIO):
    logs.setup("info", "json", stream=captured)
    log = logging.getLogger("switchboard.test")
    logs.event(log, logging.INFO, "request", request_id="r-1", channel="demo", status=200, latency_ms=1.25, key=None)
    log.warning("plain %s", "words")
    log.debug("not at info")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it broke")
    logs.stop()
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert len(lines) == 3
    first = lines[0]
    assert first["event"] == "request" and first["level"] == "info" and first["logger"] == "switchboard.test"
    assert (first["request_id"], first["channel"], first["status"], first["latency_ms"]) == ("r-1", "demo", 200, 1.25)
    assert "key" not in first and first["ts"].endswith("Z")
    assert lines[1]["msg"] == "plain words" and lines[1]["level"] == "warning"
    assert lines[2]["msg"] == "it broke" and "ValueError: boom" in lines[2]["exc"]


def test_text_lines_quote_values_with_spaces(captured: io.StringIO):
    logs.setup("info", "text", stream=captured)
    logs.event(logging.getLogger("switchboard.t"), logging.INFO, "attempt", provider="main", error='a "b" c', n=2)
    logs.stop()
    line = captured.getvalue().strip()
    assert line.endswith('switchboard.t: attempt provider=main error="a \\"b\\" c" n=2'), line


def test_a_blocked_stream_does_not_block_the_logging_call(captured: io.StringIO):
    gate = threading.Event()

    class Blocked(io.StringIO):
        def write(self, s: str) -> int:
            gate.wait(10)
            return super().write(s)

    stream = Blocked()
    logs.setup("info", "text", stream=stream)
    log = logging.getLogger("switchboard.t")
    done = threading.Event()

    def many() -> None:
        for i in range(100):
            log.info("line %d", i)
        done.set()

    t = threading.Thread(target=many)
    t.start()
    assert done.wait(5), "log calls waited for the stream"
    gate.set()
    logs.stop()  # writes what is queued
    t.join()
    assert stream.getvalue().count("line ") == 100
