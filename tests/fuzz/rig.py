"""Shared by the fuzz tests: hypothesis settings, strategies that break recorded payloads
(wrong types in every field, wrong nesting, huge numbers, odd encodings), and `Rig`, the real
app (lifespan run, fake platform APIs on loopback) driven in-process through httpx's
ASGITransport.

Each door's test signs its mutated bodies validly and sends them with `Rig.send`, which asserts
what issue 9 asks of every answer: never a 5xx, no exception escaping the app, no error logged
(in the handler or in the background work an accepted message starts), and, for a refused
request (4xx), no state change: no store write and no background job.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from hypothesis import HealthCheck, currently_in_test_context, event, settings
from hypothesis import strategies as st

from proxy.app import create_app
from proxy.config import parse_config

#: Modest, repeatable runs: the same examples every time (derandomized, no example database).
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: Store methods that change state; a refused request must call none of them.
STORE_WRITES = (
    "claim",
    "claim_lease",
    "renew",
    "settle",
    "put",
    "delete",
    "append",
    "clear",
    "set_state",
    "release_others",
)

# -- strategies ---------------------------------------------------------------------------------

ODD_STRINGS = ["", " ", "0", "-1", "1e999", "null", "true", "[]", "{}", "\x00", "\u202e", "𝕏" * 3, "a" * 3000]
HUGE = [2**63 - 1, 2**63, 2**64, 2**64 + 1, -(2**63) - 1, 10**30, -(10**40)]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**31), max_value=2**31),
    st.sampled_from(HUGE),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(ODD_STRINGS),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _paths(node: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [here]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*here, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*here, i))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


@st.composite
def mutated(draw: Callable[..., Any], base: Any, max_changes: int = 3) -> Any:
    """`base` with 1..max_changes changes anywhere in it: a value replaced by any JSON value, a
    key dropped, a value wrapped in a list or an object, or replaced by its own JSON text, or a
    key added to an object."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, max_changes))):
        path = draw(st.sampled_from(_paths(doc)))
        old = _get(doc, path)
        ops = ["replace", "replace", "delete", "list", "object", "text"] + ["add"] * isinstance(old, dict) * 2
        op = draw(st.sampled_from(ops))
        if op == "add":
            old[draw(st.text(max_size=8))] = draw(json_values)
            continue
        if op == "replace":
            new = draw(json_values)
        else:
            new = {"delete": None, "list": [old], "object": {"value": old}, "text": json.dumps(old)}[op]
        if not path:
            doc = new
            continue
        parent = _get(doc, path[:-1])
        if op == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = new
    return doc


@st.composite
def json_bytes(draw: Callable[..., Any], doc: Any) -> bytes:
    """`doc` as a JSON body, in UTF-8 as a rule and sometimes in an odd encoding or cut short.
    (json.dumps, not orjson: integers beyond 64 bits must reach the wire.)"""
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    how = draw(st.sampled_from(["utf-8"] * 15 + ["utf-8-sig", "utf-16", "latin-1", "cut", "nul"]))
    if how == "cut":
        return text.encode()[: draw(st.integers(0, max(0, len(text) - 1)))]
    if how == "nul":
        return text.encode() + b"\x00"
    return text.encode(how, errors="replace")


def body_of(base: Any) -> st.SearchStrategy[bytes]:
    """Mostly a mutated `base`; sometimes `base` itself (in an odd encoding, perhaps), any JSON
    value, or bytes that are not JSON at all."""
    return st.one_of(
        st.just(base).flatmap(json_bytes),
        mutated(base, 1).flatmap(json_bytes),
        mutated(base, 1).flatmap(json_bytes),
        mutated(base).flatmap(json_bytes),
        mutated(base).flatmap(json_bytes),
        json_values.flatmap(json_bytes),
        st.binary(max_size=64),
    )


# -- the app ------------------------------------------------------------------------------------


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


#: The rest of a one-platform fuzz config: a memory store, no retries, every message answered
#: by the echo provider (`{**ECHO_ONLY, "platforms": {...}}`).
ECHO_ONLY: dict[str, Any] = {
    "store": {"url": "memory://"},
    "failover": {"attempts": 1},
    "providers": {"echo": {"kind": "echo"}},
    "channels": [{"name": "echo", "providers": ["echo"]}],
}


class Rig:
    """The real app from `config`, its lifespan run, requests sent through ASGITransport."""

    def __init__(self, config: dict[str, Any], env: dict[str, str] | None = None) -> None:
        self.app = create_app(parse_config(config, env or {}))
        self.writes: list[str] = []
        self.jobs: list[asyncio.Task[Any]] = []
        self.errors = _Errors()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Rig]:
        async with self.app.router.lifespan_context(self.app):
            self._spy()
            transport = httpx.ASGITransport(app=self.app)  # raises what escapes the app
            async with httpx.AsyncClient(transport=transport, base_url="http://switchboard") as self.client:
                logger = logging.getLogger("switchboard")
                logger.addHandler(self.errors)
                try:
                    yield self
                finally:
                    logger.removeHandler(self.errors)

    def _spy(self) -> None:
        store = self.app.state.engine.store
        for name in STORE_WRITES:
            method = getattr(store, name, None)
            if method is not None:
                setattr(store, name, self._recording(name, method))
        runner = self.app.state.runner
        spawn = runner.spawn

        def recording(*args: Any, **kwargs: Any) -> Any:
            task = spawn(*args, **kwargs)
            self.jobs.append(task)
            return task

        runner.spawn = recording

    def _recording(self, name: str, method: Any) -> Any:
        async def recorded(*args: Any, **kwargs: Any) -> Any:
            self.writes.append(name)
            return await method(*args, **kwargs)

        return recorded

    async def send(self, path: str, body: bytes, headers: dict[str, str], **params: str) -> httpx.Response:
        writes, jobs, errors = len(self.writes), len(self.jobs), len(self.errors.records)
        r = await self.client.post(path, content=body, headers=headers, params=params)
        if currently_in_test_context():
            event(f"status {r.status_code}")  # see --hypothesis-show-statistics
        assert r.status_code < 500, (r.status_code, r.text[:300], body[:300])
        if r.status_code >= 400:
            changed = self.writes[writes:], self.jobs[jobs:]
            assert changed == ([], []), (r.status_code, r.text[:300], body[:300], changed)
        await self.settle()
        assert self.errors.records[errors:] == [], [rec.getMessage() for rec in self.errors.records[errors:]]
        return r

    async def settle(self) -> None:
        """Let the background work of accepted messages finish (replies delivered)."""
        pending = [t for t in self.jobs if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=10)
        self.jobs = [t for t in self.jobs if not t.done()]
