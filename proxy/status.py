"""`GET /status`: the operator's page. Server-rendered HTML with inline SVG charts: no script, no
CDN, works offline.

What it shows: the route table (channel → match → provider chain, disabled adapters and why);
each provider's health (circuit, latency p50/p95 and error rate over the last hour, keys as the
provider describes them, masked); each platform's webhook traffic over the last 24 h (time to
acknowledge, server errors, acknowledgement deadline misses); tokens per channel over the last
24 h (per hour) and 7 days (per day) from the store; the last warnings and errors. Latency,
traffic and errors are this instance's (in memory); usage is every instance's (the store).

Access: an admin key (`admin.keys`), as `Authorization: Bearer` or through the login form,
which sets a cookie: `<expiry>.<HMAC-SHA256 of the expiry under the SHA-256 of the admin key>`,
HttpOnly, SameSite=Strict, for `SESSION` seconds. Removing or changing the key ends the
sessions made with it; the key itself is never stored in the cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from proxy.admin import NOT_CONFIGURED, Admin
from proxy.config import Settings
from proxy.engine import Engine
from proxy.recent import Recent
from proxy.usage import report, series

COOKIE = "switchboard_admin"
#: Seconds a login lasts.
SESSION = 12 * 3600
#: Largest login form body read.
MAX_FORM = 4096
HTML_TYPE = "text/html; charset=utf-8"
HOUR, DAY = 3600, 86400


def _mac(key: str, expires: int) -> str:
    secret = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
    return hmac.new(secret, str(expires).encode(), hashlib.sha256).hexdigest()


def session_value(key: str, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + SESSION)
    return f"{expires}.{_mac(key, expires)}"


def session_ok(value: str, keys: Iterable[str], now: float | None = None) -> bool:
    expires_text, _, mac = value.partition(".")
    if not expires_text.isdigit() or int(expires_text) < (time.time() if now is None else now):
        return False
    found = False
    for key in keys:  # every key is compared, in constant time
        found |= hmac.compare_digest(_mac(key, int(expires_text)), mac)
    return found


class StatusPage:
    def __init__(self, engine: Engine, admin: Admin, recent: Recent, platforms: Callable[[], dict[str, Any]]) -> None:
        self.engine, self.admin, self.recent, self.platforms = engine, admin, recent, platforms
        self.started = time.time()

    # -- access ------------------------------------------------------------------------------

    def _signed_in(self, request: Request) -> bool:
        keys = self.engine.settings.raw.admin.keys
        cookie = request.cookies.get(COOKIE)
        if cookie and session_ok(cookie, keys):
            return True
        return request.headers.get("authorization") is not None and self.admin.refusal(request) is None

    async def page(self, request: Request) -> Response:
        if not self.engine.settings.raw.admin.keys:
            return _html(_frame("Switchboard status", f"<p class=warn>{_e(NOT_CONFIGURED)}</p>"), 403)
        if not self._signed_in(request):
            return _html(_login(), 401)
        return _html(await self.render(), headers={"cache-control": "no-store"})

    async def login(self, request: Request) -> Response:
        keys = self.engine.settings.raw.admin.keys
        if not keys:
            return _html(_frame("Switchboard status", f"<p class=warn>{_e(NOT_CONFIGURED)}</p>"), 403)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM:
                return _html(_login("The form is too large."), 413)
        given = (parse_qs(body.decode("utf-8", "replace")).get("key") or [""])[0].strip()
        matched = None
        for key in keys:
            if hmac.compare_digest(key.encode("utf-8", "surrogateescape"), given.encode("utf-8", "surrogateescape")):
                matched = key
        if matched is None:
            return _html(_login("That is not an admin key."), 401)
        secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
        response = Response(status_code=303, headers={"location": "/status"})
        value = session_value(matched)
        response.set_cookie(COOKIE, value, SESSION, path="/status", httponly=True, samesite="strict", secure=secure)
        return response

    async def logout(self, request: Request) -> Response:
        response = Response(status_code=303, headers={"location": "/status"})
        response.delete_cookie(COOKIE, path="/status")
        return response

    # -- the page ----------------------------------------------------------------------------

    async def render(self) -> str:
        settings = self.engine.settings
        parts = [
            self._head(settings),
            self._routes(settings),
            self._providers(settings),
            self._platforms(settings),
            await self._usage(settings),
            self._errors(),
        ]
        return _frame("Switchboard status", "\n".join(parts))

    def _head(self, settings: Settings) -> str:
        up = time.time() - self.started
        store = settings.raw.store.scheme
        bus = ""
        if engine_bus := getattr(self.engine, "bus", None):
            bus = f" · bus {'listening' if engine_bus.listening else 'not listening'}" if engine_bus.active else ""
        return (
            f"<header><h1>Switchboard</h1><p>up {_duration(up)} · store {_e(store)}{bus} · "
            f"{len(settings.channels)} channel(s), {len(self.engine.providers)} provider(s), "
            f"{len(self.platforms())} platform(s)</p>"
            '<form method=post action="/status/logout"><button>Sign out</button></form></header>'
        )

    def _routes(self, settings: Settings) -> str:
        rows = []
        for ch in settings.channels:
            m = ch.config.match
            match = ", ".join(f"{k}={v}" for k, v in vars(m).items() if v is not None) or "anything"
            chain = " → ".join(
                f'<span class="{"off" if p in ch.skipped else "on"}">{_e(p)}</span>' for p in ch.config.providers
            )
            rows.append(
                f"<tr data-channel='{_e(ch.name)}'><td>{_e(ch.name)}</td><td>{_e(match)}</td><td>{chain}</td></tr>"
            )
        off = [
            f"<li>{_e(kind)} <b>{_e(name)}</b> ({_e(a.kind)}): {_e(a.disabled)}</li>"
            for kind, adapters in (("provider", settings.providers), ("platform", settings.platforms))
            for name, a in adapters.items()
            if a.disabled
        ]
        disabled = f"<h3>Disabled</h3><ul class=disabled>{''.join(off)}</ul>" if off else ""
        return (
            "<section id=routes><h2>Routes</h2><p class=note>First match wins.</p>"
            "<table><tr><th>channel</th><th>match</th><th>providers (failover order)</th></tr>"
            f"{''.join(rows) or '<tr><td colspan=3>(none)</td></tr>'}</table>{disabled}</section>"
        )

    def _providers(self, settings: Settings) -> str:
        failover = self.engine.failover
        now = time.monotonic()
        rows = []
        for name, adapter in settings.providers.items():
            if adapter.disabled:
                continue
            circuit = failover.circuits.get(name) if failover else None
            state, left = circuit.report(now) if circuit else ("closed", 0.0)
            label = f"open ({left:.0f} s left)" if state == "open" else state
            s = self.recent.provider(name)
            provider = self.engine.providers.get(name)
            keys = _e(provider.describe()) if provider else ""
            states = provider.key_status() if provider else []
            if states:
                items = "".join(f"<li>{_e(k['key'])}: {_e(k['state'])}</li>" for k in states)
                keys += f"<ul class=keys>{items}</ul>"
            rows.append(
                f"<tr data-provider='{_e(name)}' data-circuit='{_e(state)}'><td>{_e(name)}</td>"
                f"<td>{_e(adapter.kind)}</td>"
                f"<td class='circuit {_e(state)}'>{_e(label)}</td><td>{s.count}</td><td>{_ms(s.p50_ms)}</td>"
                f"<td>{_ms(s.p95_ms)}</td><td>{_pct(s.error_rate)}</td><td>{keys}</td></tr>"
            )
        return (
            "<section id=providers><h2>Providers</h2><p class=note>Attempts over the last hour, this instance.</p>"
            "<table><tr><th>provider</th><th>kind</th><th>circuit</th><th>attempts</th><th>p50</th><th>p95</th>"
            f"<th>errors</th><th>keys</th></tr>{''.join(rows) or '<tr><td colspan=8>(none)</td></tr>'}</table>"
            "</section>"
        )

    def _platforms(self, settings: Settings) -> str:
        rows = []
        for name, adapter in settings.platforms.items():
            if adapter.disabled:
                continue
            s = self.recent.platform(name)
            rows.append(
                f"<tr data-platform='{_e(name)}'><td>{_e(name)}</td><td>{_e(adapter.kind)}</td><td>{s.count}</td>"
                f"<td>{_ms(s.p50_ms)}</td><td>{_ms(s.p95_ms)}</td><td>{s.errors}</td><td>{s.misses}</td></tr>"
            )
        return (
            "<section id=platforms><h2>Platforms</h2><p class=note>Webhook requests over the last 24 h, this "
            "instance; a miss is an acknowledgement later than the platform waits.</p>"
            "<table><tr><th>platform</th><th>kind</th><th>requests</th><th>ack p50</th><th>ack p95</th><th>5xx</th>"
            f"<th>deadline misses</th></tr>{''.join(rows) or '<tr><td colspan=7>(none)</td></tr>'}</table></section>"
        )

    async def _usage(self, settings: Settings) -> str:
        now = time.time()
        try:
            rows = await self.engine.store.usage(now - 7 * DAY)
        except Exception as e:
            why = _e(type(e).__name__)
            return f"<section id=usage><h2>Usage</h2><p class=warn>Usage unavailable: {why}</p></section>"
        day = [r for r in rows if r.hour >= now - DAY]
        groups = {g["channel"]: g for g in report(day, "channel")}
        week = {g["channel"]: g for g in report(rows, "channel")}
        names = sorted(set(week) | {c.name for c in settings.channels})
        blocks = []
        for name in names:
            hourly = series(rows, now - DAY + HOUR, name)
            daily = _by_day([(h, n) for h, n in series(rows, now - 7 * DAY + HOUR, name)])
            d, w = groups.get(name, {}), week.get(name, {})
            blocks.append(
                f"<div class=usage data-channel='{_e(name)}' data-tokens-24h='{d.get('total_tokens', 0)}' "
                f"data-tokens-7d='{w.get('total_tokens', 0)}'><h3>{_e(name)}</h3>"
                f"<p>24 h: <b>{d.get('total_tokens', 0):,}</b> tokens in {d.get('requests', 0):,} requests · "
                f"7 d: <b>{w.get('total_tokens', 0):,}</b></p>"
                f"{_bars(hourly, 'tokens per hour, last 24 h')}{_bars(daily, 'tokens per day, last 7 days')}</div>"
            )
        return (
            "<section id=usage><h2>Usage</h2><p class=note>Tokens per channel, every instance.</p>"
            f"{''.join(blocks) or '<p>(no channels)</p>'}</section>"
        )

    def _errors(self) -> str:
        rows = [
            f"<tr><td>{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t))}</td><td>{_e(level)}</td>"
            f"<td>{_e(logger)}</td><td>{_e(message)}</td></tr>"
            for t, level, logger, message in reversed(self.recent.errors.records)
        ]
        return (
            "<section id=errors><h2>Last warnings and errors</h2>"
            "<table><tr><th>time</th><th>level</th><th>where</th><th>what</th></tr>"
            f"{''.join(rows) or '<tr><td colspan=4>(none)</td></tr>'}</table></section>"
        )


# ------------------------------------------------------------------------------------- helpers


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f} %"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _by_day(hourly: list[tuple[int, int]]) -> list[tuple[int, int]]:
    days: dict[int, int] = {}
    for hour, n in hourly:
        day = hour // DAY * DAY
        days[day] = days.get(day, 0) + n
    return sorted(days.items())


def _bars(points: list[tuple[int, int]], title: str) -> str:
    """A small bar chart (inline SVG) with a title and each bar's value in its tooltip."""
    width, height = 360, 60
    top = max((n for _, n in points), default=0)
    step = width / max(1, len(points))
    bars = []
    for i, (t, n) in enumerate(points):
        h = 0 if not top else max(1, round(n / top * (height - 2))) if n else 0
        when = time.strftime("%m-%d %H:00", time.localtime(t))
        bars.append(
            f'<rect x="{i * step:.1f}" y="{height - h}" width="{max(1.0, step - 1):.1f}" height="{h}">'
            f"<title>{when}: {n:,}</title></rect>"
        )
    return (
        f'<figure><svg role="img" aria-label="{_e(title)}" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" data-max="{top}"><line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" '
        f'stroke="#bbb"/>{"".join(bars)}</svg><figcaption>{_e(title)} (max {top:,})</figcaption>'
        "</figure>"
    )


def _login(problem: str = "") -> str:
    warn = f"<p class=warn>{_e(problem)}</p>" if problem else ""
    form = (
        f"{warn}<form method=post action='/status/login' class=login><label>Admin key "
        "<input type=password name=key autocomplete=current-password autofocus required></label>"
        "<button type=submit>Sign in</button></form>"
    )
    return _frame("Switchboard status: sign in", form)


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
header{display:flex;gap:1em;align-items:baseline;flex-wrap:wrap}h1{margin:0}
table{border-collapse:collapse;margin:.5em 0}td,th{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left}
.note{color:#666;margin:.2em 0}.warn{color:#a40}.off{text-decoration:line-through;color:#999}
.circuit.open{color:#fff;background:#c33}.circuit.half-open{background:#fd6}
.usage{display:inline-block;vertical-align:top;margin:0 2em 1em 0}figure{margin:.3em 0}
svg rect{fill:#36c}figcaption{color:#666;font-size:12px}
"""


def _frame(title: str, body: str) -> str:
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
        f"<meta name=viewport content='width=device-width'><style>{STYLE}</style></head><body>{body}</body></html>"
    )


def _html(text: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(text, status, headers=headers, media_type=HTML_TYPE)
