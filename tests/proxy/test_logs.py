"""Log lines as operators read them: text or one JSON object per line, written by a thread of
their own (a stream that blocks does not stall the caller), nothing lost at exit."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest

from proxy import logs
from proxy.doors.chat import Trace
from proxy.failover import Attempt


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


def _traces() -> list[Trace]:
    plain = Trace()
    plain.id, plain.status, plain.latency = "r-1", 401, 0.00042
    full = Trace()
    full.id, full.channel, full.provider, full.key, full.status = "r-2", "assist", "main up", "web=app", 200
    full.stream, full.first_byte, full.latency, full.failover = True, full.started + 0.0123, 0.5, True
    full.tokens, full.content = (12, 34, True), ('say "hi"\nplease', "")
    counted = Trace()
    counted.id, counted.channel, counted.provider, counted.status, counted.tokens = "r-3", "c", "p", 200, (1, 2, False)
    return [plain, full, counted]


@pytest.mark.parametrize("line", [*_traces(), Attempt("r-4", "assist", "up", 0.2), Attempt(None, "a b", "up", 0.001)])
def test_the_hot_lines_read_as_their_fields_would(line: logs.Event):
    """The request and attempt lines have their own text rendering (a third of the time of the
    generic one): it must say exactly what the generic rendering of their fields says."""
    assert str(line) == logs.render(line.event, line.fields())
