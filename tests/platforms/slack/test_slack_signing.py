"""Slack v0 request signatures: our check against the doc's algorithm and slack_sdk's verifier."""

from __future__ import annotations

import time

import pytest
from slack_sdk.signature import SignatureVerifier

from platforms.slack.signing import signature, verify_request
from proxy.errors import VerificationError
from tests.platforms.slack.slack_kit import SECRET, raw, shortcut_form, sign

NOW = 1_700_000_000


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


@pytest.mark.parametrize("body", [raw("message_im"), shortcut_form("shortcut_stop"), b""])
def test_signature_matches_the_doc_and_slack_sdk(body):
    ts = str(NOW)
    ours = signature(SECRET, ts, body)
    assert ours == sign(body, NOW)["X-Slack-Signature"]
    verifier = SignatureVerifier(SECRET, clock=type("Clock", (), {"now": lambda self: float(NOW)})())
    assert verifier.is_valid(body, ts, ours)
    assert not verifier.is_valid(body + b" ", ts, ours)


def test_known_vector():
    # Slack's documented example (api.slack.com/authentication/verifying-requests-from-slack)
    body = (
        b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
        b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
        b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
        b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
    )
    expected = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    assert signature(SECRET, "1531420618", body) == expected


def test_a_good_request_passes_at_both_edges_of_the_window():
    body = raw("message_im")
    for skew in (-300, 0, 300):
        verify_request(SECRET, lower(sign(body, NOW + skew)), body, now=NOW)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-slack-request-timestamp": str(NOW)},
        {"x-slack-signature": lower(sign(b"{}", NOW))["x-slack-signature"]},
        lower(sign(b"{}", NOW, secret="another-secret")),
        lower(sign(b"{}", NOW - 301)),
        lower(sign(b"{}", NOW + 301)),
        lower(sign(b"{}", NOW * 1000)),  # milliseconds are not seconds
        {**lower(sign(b"{}", NOW)), "x-slack-request-timestamp": f" {NOW}"},
        {**lower(sign(b"{}", NOW)), "x-slack-request-timestamp": "1_700_000_000"},
        {**lower(sign(b"{}", NOW)), "x-slack-signature": "v0=ünïcode"},
        {**lower(sign(b"{}", NOW)), "x-slack-signature": lower(sign(b"{}", NOW))["x-slack-signature"].upper()},
        {**lower(sign(b"{}", NOW)), "x-slack-request-timestamp": "9" * 400},
    ],
)
def test_bad_requests_are_refused(headers):
    with pytest.raises(VerificationError) as err:
        verify_request(SECRET, headers, b"{}", now=NOW)
    assert SECRET not in str(err.value)


def test_the_timestamp_is_checked_before_the_hmac(monkeypatch):
    computed: list[str] = []

    def counting_signature(*args: object) -> str:
        computed.append("x")
        return "v0="

    monkeypatch.setattr("platforms.slack.signing.signature", counting_signature)
    with pytest.raises(VerificationError, match="window"):
        verify_request(SECRET, lower(sign(b"{}", NOW - 3600)), b"{}", now=NOW)
    assert computed == []


def test_default_clock_is_now():
    body = b'{"type":"event_callback"}'
    verify_request(SECRET, lower(sign(body)), body)
    with pytest.raises(VerificationError):
        verify_request(SECRET, lower(sign(body, int(time.time()) - 600)), body)
