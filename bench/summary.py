"""BENCHMARKS.md from the raw results: tables, ratios to the peers, targets pass/fail, profile."""

from __future__ import annotations

from typing import Any

from targets import Paths

ORDER = (
    "direct",
    "passthrough",
    "switchboard",
    "switchboard-limits",
    "switchboard-logs-off",
    "switchboard-anthropic",
    "switchboard-baseline",
    "portkey",
    "litellm",
)
LABEL = {
    "direct": "direct upstream",
    "passthrough": "bare passthrough",
    "switchboard": "**Switchboard**",
    "switchboard-limits": "Switchboard with `limits:`",
    "switchboard-logs-off": "Switchboard, logs off (`log_level: warning`)",
    "switchboard-baseline": "`BENCH_BASELINE` checkout, logs off",
    "switchboard-anthropic": "Switchboard, Anthropic `/v1/messages`",
    "portkey": "Portkey gateway",
    "litellm": "LiteLLM proxy",
}
SCENARIOS = (
    ("json_c1", "JSON, 1 conn"),
    ("json_c50", "JSON, 50 conns"),
    ("sse_c1", "SSE, 1 conn"),
    ("sse_c50", "SSE, 50 conns"),
)


def get(doc: dict[str, Any], *path: str) -> Any:
    node: Any = doc
    for p in path:
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def fmt(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "—"
    return f"{x:,.{digits}f}"


def checks(doc: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) — met is None when it could not be measured in this run."""
    r = doc["results"]
    rps = lambda name, s: get(r, name, s, "rps")  # noqa: E731
    out: list[tuple[str, str, bool | None]] = []

    def ratio_check(label: str, scenario: str, peer: str, need: float) -> None:
        ours, theirs = rps("switchboard", scenario), rps(peer, scenario)
        if ours and theirs == 0:  # the peer finished no request at all: bound it by one request
            x = ours * (get(r, peer, scenario, "seconds") or 1.0)
            out.append((label, f"> {x:.0f}× ({peer} completed no request)", x >= need))
            return
        x = ratio(ours, theirs)
        out.append(
            (label, f"{x:.2f}×" if x is not None else f"n/a ({peer} not measured)", None if x is None else x >= need)
        )

    ratio_check("non-streaming req/s at 50 conns ≥ 20× LiteLLM proxy", "json_c50", "litellm", 20)
    ratio_check("non-streaming req/s at 50 conns ≥ 4× Portkey", "json_c50", "portkey", 4)
    ratio_check("non-streaming req/s at 50 conns ≥ 50 % of bare passthrough", "json_c50", "passthrough", 0.5)
    ratio_check("streaming req/s at 50 conns ≥ 50× LiteLLM proxy", "sse_c50", "litellm", 50)
    ratio_check("streaming req/s at 50 conns ≥ 50 % of bare passthrough", "sse_c50", "passthrough", 0.5)
    lim = ratio(rps("switchboard-limits", "json_c50"), rps("switchboard", "json_c50"))
    out.append(
        (
            "non-streaming req/s at 50 conns with limits (key rpm + tokens, channel rpm + concurrent) ≥ 0.9× without",
            f"{lim:.2f}×" if lim is not None else "n/a (switchboard-limits not measured)",
            None if lim is None else lim >= 0.9,
        )
    )
    door = ratio(rps("switchboard-anthropic", "sse_c50"), rps("switchboard", "sse_c50"))
    out.append(
        (
            "Anthropic `/v1/messages` streaming req/s at 50 conns ≥ 0.8× OpenAI chat streaming (same config)",
            f"{door:.2f}×" if door is not None else "n/a (switchboard-anthropic not measured)",
            None if door is None else door >= 0.8,
        )
    )
    for scenario, what in (("json_c50", "non-streaming"), ("sse_c50", "streaming")):
        quiet = ratio(rps("switchboard", scenario), rps("switchboard-logs-off", scenario))
        out.append(
            (
                f"{what} req/s at 50 conns with the default logs (a line per request and attempt) and usage "
                "recording ≥ 0.9× logs off",
                f"{quiet:.2f}×" if quiet is not None else "n/a (switchboard-logs-off not measured)",
                None if quiet is None else quiet >= 0.9,
            )
        )
    sb, direct = get(r, "switchboard", "json_c1", "p50_ms"), get(r, "direct", "json_c1", "p50_ms")
    added = sb - direct if sb is not None and direct is not None else None
    out.append(
        (
            "added p50 latency over direct upstream at 1 conn ≤ 0.5 ms",
            f"{added:.3f} ms" if added is not None else "n/a",
            None if added is None else added <= 0.5,
        )
    )
    rss, ready = get(r, "switchboard", "idle_rss_mb"), get(r, "switchboard", "ready_s")
    out.append(("idle RSS ≤ 80 MB", f"{rss} MB" if rss else "n/a", None if rss is None else rss <= 80))
    out.append(
        (
            "ready (process start → first answered request) ≤ 1.5 s",
            f"{ready} s" if ready else "n/a",
            None if ready is None else ready <= 1.5,
        )
    )
    slow = get(r, "switchboard", "slow_streams") or {}
    measured = "failed" not in slow and slow.get("streams") is not None
    errors = slow.get("errors")
    out.append(
        (
            f"{doc['meta']['slow_streams']:,} concurrent slow streams: zero errors",
            f"{errors} errors, {slow.get('ok')} complete" if measured else "n/a",
            (errors == 0 and slow.get("ok") == slow.get("streams")) if measured else None,
        )
    )
    peak = slow.get("peak_rss_mb")
    out.append(("… RSS ≤ 250 MB", f"{peak} MB" if peak else "n/a", None if not peak else peak <= 250))
    gap, held = get(slow, "gap_extra_ms", "99"), get(slow, "gap_extra_held_ms", "99")
    whole = f" (whole run, including the 1 s ramp of new connections: {gap:.1f} ms)" if gap is not None else ""
    out.append(
        (
            "… p99 extra delay per chunk ≤ 20 ms, while all streams are held",
            f"{held:.1f} ms{whole}" if held is not None else "n/a",
            None if held is None else held <= 20,
        )
    )
    floor = [x for k in ("json_c50", "sse_c50") if (x := ratio(rps("direct", k), rps("passthrough", k)))]
    if len(floor) == 2:
        label = "sanity: the upstream is not the bottleneck (direct ≥ 2× passthrough at 50 conns, JSON / SSE)"
        out.append((label, " / ".join(f"{x:.1f}×" for x in floor), min(floor) >= 2))
    hook = get(r, "switchboard", "webhook") or {}
    p99 = hook.get("p99_ms")
    if p99 is not None:
        out.append(
            (
                "webhook ack p99 ≤ 50 ms under a 200 req/s burst",
                f"{p99:.1f} ms at {hook['rps']:.0f} req/s, {hook['errors']} errors",
                p99 <= 50 and not hook["errors"],
            )
        )
    else:
        out.append(
            (
                "webhook ack p99 ≤ 50 ms under a 200 req/s burst",
                hook.get("failed") or f"pending: {doc['meta'].get('slack_pending')}",
                None,
            )
        )
    return out


def checks_text(doc: dict[str, Any]) -> str:
    mark = {True: "PASS", False: "FAIL", None: "n/a "}
    return "\n".join(f"  {mark[ok]}  {label}: {value}" for label, value, ok in checks(doc))


def _names(doc: dict[str, Any]) -> list[str]:
    return [n for n in ORDER if n in doc["results"]]


def throughput_table(doc: dict[str, Any]) -> list[str]:
    r = doc["results"]
    lines = [
        "| target | "
        + " | ".join(f"{t} req/s · p50 / p99 ms" for _, t in SCENARIOS)
        + " | added p50 at 1 conn, JSON / SSE |",
        "|---" * (len(SCENARIOS) + 2) + "|",
    ]
    for n in _names(doc):
        if "failed" in r[n]:
            lines.append(f"| {LABEL[n]} | " + " | ".join("—" for _ in SCENARIOS) + f" | {r[n]['failed'][:80]} |")
            continue
        cells = []
        for key, _ in SCENARIOS:
            s = r[n].get(key) or {}
            if "rps" not in s:
                cells.append("failed")
                continue
            err = f" ⚠ {s['errors']:,} errors" if s.get("errors") else ""
            cells.append(f"{fmt(s['rps'], 0)} · {fmt(s['p50_ms'], 2)} / {fmt(s['p99_ms'], 2)}{err}")
        added = []
        for key in ("json_c1", "sse_c1"):
            a, d = get(r, n, key, "p50_ms"), get(r, "direct", key, "p50_ms")
            added.append("—" if n == "direct" or a is None or d is None else f"{a - d:+.2f} ms")
        lines.append(f"| {LABEL[n]} | " + " | ".join(cells) + f" | {' / '.join(added)} |")
    return lines


def ratio_table(doc: dict[str, Any]) -> list[str]:
    r = doc["results"]
    peers = [n for n in ("passthrough", "portkey", "litellm", "direct") if n in r and "failed" not in r[n]]
    lines = ["| Switchboard req/s ÷ … | " + " | ".join(t for _, t in SCENARIOS) + " |", "|---" * 5 + "|"]
    for p in peers:
        cells = [ratio(get(r, "switchboard", k, "rps"), get(r, p, k, "rps")) for k, _ in SCENARIOS]
        lines.append(f"| {LABEL[p]} | " + " | ".join("—" if c is None else f"{c:.2f}×" for c in cells) + " |")
    return lines


def cpu_table(doc: dict[str, Any]) -> list[str]:
    """CPU time per answered request of each target's own processes: what a request costs,
    steadier than req/s on a shared machine (waiting for a core is not counted)."""
    r = doc["results"]
    lines = ["| target | " + " | ".join(t for _, t in SCENARIOS) + " |", "|---" * 5 + "|"]
    for n in _names(doc):
        if n == "direct":
            continue
        cells = [get(r, n, k, "cpu_us_per_request") for k, _ in SCENARIOS]
        if all(c is None for c in cells):
            continue
        lines.append(f"| {LABEL[n]} | " + " | ".join("—" if c is None else f"{c:,.0f} µs" for c in cells) + " |")
    return lines


def footprint_table(doc: dict[str, Any]) -> list[str]:
    r = doc["results"]
    n_streams = doc["meta"]["slow_streams"]
    lines = [
        f"| target | ready s | idle RSS MB | {n_streams:,} slow streams: complete / errors | peak RSS MB "
        "| extra delay per chunk p50 / p99 ms | p99 once all are open | chunk transit p99 ms |",
        "|---" * 8 + "|",
    ]
    for n in _names(doc):
        s = r[n].get("slow_streams") or {}
        if "failed" in s or not s:
            slow = [s.get("failed", "—")[:60] if s else "—", fmt(s.get("peak_rss_mb")), "—", "—", "—"]
        else:
            kinds = ", ".join(f"{k}: {v}" for k, v in list((s.get("error_kinds") or {}).items())[:2])
            peak = s.get("peak_open") or 0
            held = f" (at most {peak:,} open at once)" if peak < s["streams"] else ""
            slow = [
                f"{s['ok']:,} / {s['errors']:,}" + (f" ({kinds})" if kinds else "") + held,
                fmt(s.get("peak_rss_mb")),
                f"{fmt(get(s, 'gap_extra_ms', '50'))} / {fmt(get(s, 'gap_extra_ms', '99'))}",
                fmt(get(s, "gap_extra_held_ms", "99")),
                fmt(get(s, "transit_ms", "99")),
            ]
        ready = "—" if n == "direct" else fmt(r[n].get("ready_s"), 2)
        lines.append(f"| {LABEL[n]} | {ready} | {fmt(r[n].get('idle_rss_mb'))} | " + " | ".join(slow) + " |")
    return lines


def webhook_lines(doc: dict[str, Any]) -> list[str]:
    hook = get(doc, "results", "switchboard", "webhook")
    if not hook:
        return [
            f"Pending: {doc['meta'].get('slack_pending')}. The harness is ready (bench/webhook.py, "
            "bench/slack.lua, bench/fake_slack.py) and runs as soon as `platforms/slack/` exists."
        ]
    if "failed" in hook:
        return [f"Not measured: {hook['failed']}"]
    rep = hook.get("replies") or {}
    return [
        f"{hook['requests']:,} signed `app_mention` events in {hook['seconds']:.1f} s ({hook['rps']:.0f} req/s "
        f"over 20 connections, target {hook['target_rate']} req/s): ack p50 {hook['p50_ms']:.2f} ms, "
        f"p99 {hook['p99_ms']:.2f} ms, max {hook['max_ms']:.1f} ms, {hook['errors']} errors. "
        f"Answers delivered to the fake Slack API: {rep.get('posted', 0):,} placeholders posted and "
        f"{rep.get('final_edits', 0):,} edits for {rep.get('events', 0):,} events, "
        f"{rep.get('seconds_after_burst', '?')} s after the burst ended."
    ]


def profile_lines(doc: dict[str, Any]) -> list[str]:
    out = []
    for mode, title in (("json", "non-streaming"), ("sse", "streaming")):
        p = get(doc, "results", "switchboard", f"profile_{mode}")
        if not p:
            continue
        if "failed" in p:
            out += [f"- {title}: profile failed: {p['failed']}"]
            continue
        layers = ", ".join(f"{k} {v}%" for k, v in p["layers_pct"].items() if v >= 1)
        funcs = "; ".join(f"`{k}` {v}%" for k, v in list(p["own_functions_inclusive_pct"].items())[:8])
        out += [
            f"- **{title}, 50 connections** ({p['samples']:,} samples, {fmt(p.get('rps_while_sampled'), 0)} req/s "
            f"while sampled). Busy time by layer of the innermost frame: {layers}.",
            f"  Our functions, inclusive: {funcs}.",
        ]
    return out


def render(doc: dict[str, Any], paths: Paths) -> str:
    m = doc["meta"]
    mark = {True: "pass", False: "**FAIL**", None: "n/a"}
    lines = [
        "# Benchmarks",
        "",
        f"`make bench`, {m['date']}, commit {m['commit']}: {m['nproc']} cores ({m['cpu']}, Linux {m['kernel']}), "
        f"load average {m['load_before'][0]} before / {m['load_after'][0]} after (other work shares this machine: "
        "compare ratios within one run, not absolute numbers across runs). "
        f"Python {m['python']}, Switchboard {m['switchboard']} (Starlette {m['starlette']}, uvicorn {m['uvicorn']}, "
        f"aiohttp {m['aiohttp']}, uvloop {m['uvloop']}), LiteLLM proxy {m['litellm']}, Portkey gateway "
        f"{m['portkey']} on Node {m['node']}, {m['wrk']}. The whole run took {m['bench_seconds']:.0f} s.",
        "",
        "Every target is its own process on 127.0.0.1 in front of the same fake OpenAI upstream "
        "(`bench/upstream.py`: canned JSON, or 20 SSE chunks). wrk (1 thread) drives them in "
        f"{m['rounds']} interleaved rounds of {m['seconds_per_run']:g} s per cell (A B A B …; the target being "
        "measured runs alone, the others are SIGSTOPped); req/s is over all rounds, p50/p99 the median of the "
        "rounds. Raw numbers: `BENCHMARKS.json` (this run), `bench/results/latest.json` (the latest run, git-ignored).",
        "",
    ]
    if m.get("foreign_load"):
        others = "; ".join(f"`{x}`" for x in m["foreign_load"])
        lines += [f"**Warning:** someone else's load generator ran during this run ({others}).", ""]
    lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {label} | {value} | {mark[ok]} |" for label, value, ok in checks(doc)]
    lines += ["", "## Throughput and latency", "", *throughput_table(doc)]
    lines += ["", "## Ratios", "", *ratio_table(doc)]
    cpu = cpu_table(doc)
    if len(cpu) > 2:
        lines += [
            "",
            "## CPU per request",
            "",
            "CPU time (user + system) of the target's own processes per answered "
            "request, over all rounds: what a request costs it, whatever else runs on the machine.",
            "",
            *cpu,
        ]
    lines += [
        "",
        "## Footprint, start-up, slow streams",
        "",
        f"Slow streams: {m['slow_streams']:,} concurrent streams, started over 1 s, each 50 chunks "
        "100 ms apart upstream (5 s), read by an aiohttp client in its own process. *Extra delay per chunk* "
        "= inter-chunk arrival gap − the upstream's actual send gap (its 100 ms schedule as it really ran; "
        "chunks a proxy coalesced count separately); *transit* = arrival − the upstream's send time "
        "(stamped in the chunk); *once all are open* counts only the chunks that arrived after the last "
        "stream was answered, when no new connections were being set up. The direct row is the floor "
        "the client and upstream themselves add on this machine.",
        "",
    ]
    lines += footprint_table(doc)
    lines += ["", "## Webhook path (Slack)", "", *webhook_lines(doc)]
    if m.get("missing_peers"):
        lines += ["", "Not measured in this run: " + "; ".join(m["missing_peers"]) + "."]
    prof = profile_lines(doc)
    if prof:
        lines += ["", "## Where Switchboard's time goes (py-spy, this run)", "", *prof]
    errors = doc["results"].get("_errors")
    if errors:
        lines += ["", "Phases that failed in this run: " + "; ".join(f"{k}: {v}" for k, v in errors.items())]
    notes = paths.bench / "NOTES.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # re-render BENCHMARKS.md from bench/results/latest.json
    import orjson

    from targets import default_paths

    paths = default_paths()
    document = orjson.loads((paths.out / "latest.json").read_bytes())
    (paths.root / "BENCHMARKS.md").write_text(render(document, paths))
    print(checks_text(document))
