"""The webhook path: acknowledgement latency of signed Slack events under a 200 req/s burst,
while the generations those events start run against the upstream and reply to a fake Slack.

Events are signed here with Slack's v0 scheme (HMAC-SHA256 over `v0:{timestamp}:{body}` with
the signing secret, sent as `X-Slack-Signature: v0=<hex>` with `X-Slack-Request-Timestamp`),
each with its own event_id and a fresh timestamp, and replayed by wrk (bench/slack.lua).
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from loads import wrk
from targets import SLACK_SECRET, Paths, Target


def signed_event(n: int, ts: int, secret: str = SLACK_SECRET) -> tuple[str, str, bytes]:
    event_ts = f"{ts}.{n:06d}"
    body = orjson.dumps(
        {
            "token": "bench",
            "team_id": "TBENCH",
            "api_app_id": "ABENCH",
            "type": "event_callback",
            "event_id": f"EvBENCH{ts}{n:07d}",
            "event_time": ts,
            "authorizations": [{"team_id": "TBENCH", "user_id": "UBOT", "is_bot": True}],
            "event": {
                "type": "app_mention",
                "user": f"U{n % 97:04d}",
                "text": f"<@UBOT> question {n}",
                "ts": event_ts,
                "event_ts": event_ts,
                "channel": "CBENCH",
                "channel_type": "channel",
            },
        }
    )
    base = b"v0:" + str(ts).encode() + b":" + body
    signature = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return str(ts), signature, body


def presign(path: Path, count: int, first: int = 0) -> Path:
    ts = int(time.time())
    with open(path, "wb") as f:
        for n in range(first, first + count):
            stamp, signature, body = signed_event(n, ts)
            f.write(f"{stamp}\t{signature}\t".encode() + body + b"\n")
    return path


def probe(url: str) -> int:
    """One signed event; the status the hook answered (the adapter must say 200 to Slack)."""
    stamp, signature, body = signed_event(9_999_999, int(time.time()))
    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "content-type": "application/json",
            "x-slack-request-timestamp": stamp,
            "x-slack-signature": signature,
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def slack_calls(api: str) -> dict[str, int]:
    with urllib.request.urlopen(api.rstrip("/").rsplit("/api", 1)[0] + "/stats", timeout=5) as resp:
        return dict(orjson.loads(resp.read()))


def burst(
    paths: Paths, switchboard: Target, slack_api: str, rate: int, seconds: float, connections: int = 20
) -> dict[str, Any]:
    hook = f"http://127.0.0.1:{switchboard.port}/hooks/slack"
    status = probe(hook)
    if status != 200:
        return {"failed": f"a signed event was answered {status}, not 200"}
    time.sleep(0.5)  # let the probe's own answer land before counting
    before = slack_calls(slack_api)
    events = presign(paths.out / "slack-events.tsv", int(rate * seconds * 1.5) + 100)
    env = {
        "BENCH_SLACK_FILE": str(events),
        "BENCH_HOOK_PATH": "/hooks/slack",
        "BENCH_DELAY_MS": str(max(0, round(1000 * connections / rate) - 2)),
    }
    result = wrk(paths.bench / "slack.lua", hook, connections, seconds, env)
    if "failed" in result:
        return result
    result["target_rate"] = rate
    result["replies"] = _drain(slack_api, before, result["requests"], timeout=30.0)
    return result


def _drain(slack_api: str, before: dict[str, int], events: int, timeout: float) -> dict[str, Any]:
    """Wait (bounded) until every event's answer was delivered — the adapter posts a placeholder
    (chat.postMessage) and ends with a final chat.update — and say how long that took."""
    started = time.monotonic()
    delta: dict[str, int] = {}
    while time.monotonic() - started < timeout:
        now = slack_calls(slack_api)
        delta = {k: v - before.get(k, 0) for k, v in now.items() if v - before.get(k, 0)}
        if delta.get("chat.update", 0) >= events:
            break
        time.sleep(0.25)
    return {
        "events": events,
        "posted": delta.get("chat.postMessage", 0),
        "final_edits": delta.get("chat.update", 0),
        "seconds_after_burst": round(time.monotonic() - started, 2),
    }
