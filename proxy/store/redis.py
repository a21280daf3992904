"""redis://host:6379/0 (or rediss://) — shared state for several Switchboard instances.

Keys live under a prefix (`?prefix=name`, default `switchboard`): `<p>:t:<conversation>` is the
transcript (a list, trimmed to the cap), `<p>:s:<conversation>` the provider states (a hash),
`<p>:k:<key>` small values; claims are `SET NX EX`, atomic across instances.

Leased claims (see `proxy.contracts.Store`): `<p>:c:<key>` is a hash (owner, until, done,
payload) that expires with the dedupe ttl, and `<p>:leases` a sorted set of unsettled claims by
the time their lease runs out (for `expired_claims`). Claim and renew are Lua scripts on the
server's clock, so instances with skewed clocks agree; an old `<p>:k:<key>` marker counts as DONE.

Limits: `<p>:w:<key>:<window index>` is a counter that expires with its window, `<p>:slots:<key>`
a sorted set of concurrency slots by the time their lease runs out; both are Lua scripts on the
server's clock.

The bus between instances (`proxy/bus.py`) is the pub/sub channel `<p>:bus`, listened to on a
connection of its own.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy.contracts import Claim, ClaimState, Hit, Store, UsageRow
from proxy.errors import StoreUnavailable
from proxy.store import TRANSCRIPT_CAP, dump_message, load_message, tail_turns
from proxy.types import JSON, Message
from proxy.usage import RETENTION

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

#: KEYS: claim hash, lease set, legacy marker. ARGV: owner, lease ms, ttl ms, has payload, payload.
CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'done', 'until', 'payload')
local untl = now + tonumber(ARGV[2])
if not h[1] then
  if redis.call('EXISTS', KEYS[3]) == 1 then return {'done'} end
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'until', untl, 'done', '0')
  if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'payload', ARGV[5]) end
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('ZADD', KEYS[2], untl, KEYS[1])
  return {'new'}
end
if h[1] == '1' then return {'done'} end
if tonumber(h[2]) > now then return {'in_flight'} end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'until', untl)
redis.call('ZADD', KEYS[2], untl, KEYS[1])
return {'taken_over', h[3]}
"""
#: KEYS: claim hash, lease set. ARGV: owner, lease ms, has payload, payload.
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'done', 'owner')
if h[1] ~= '0' or h[2] ~= ARGV[1] then return 0 end
local untl = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'until', untl)
if ARGV[3] == '1' then redis.call('HSET', KEYS[1], 'payload', ARGV[4]) end
redis.call('ZADD', KEYS[2], untl, KEYS[1])
return 1
"""

#: KEYS: counter prefix. ARGV: amount, window ms, limit. Returns allowed, remaining, ms left.
HIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local w = tonumber(ARGV[2])
local idx = math.floor(now / w)
local key = KEYS[1] .. ':' .. idx
local left = (idx + 1) * w - now
local amount, limit = tonumber(ARGV[1]), tonumber(ARGV[3])
local n = tonumber(redis.call('GET', key) or '0')
if n + math.max(amount, 1) > limit then return {0, math.max(0, limit - n), left} end
if amount > 0 then
  n = redis.call('INCRBY', key, amount)
  redis.call('PEXPIRE', key, left + 1000)
end
return {1, limit - n, left}
"""
#: KEYS: slot set. ARGV: token, limit, lease ms.
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


#: Seconds to wait for a connection / an answer before the store counts as unavailable.
CONNECT_TIMEOUT, ANSWER_TIMEOUT = 2.0, 5.0


def _guarded(method: F) -> F:
    """Redis connection failures and timeouts become `StoreUnavailable` (the callers' one error
    for "the store is down"); anything else (a bug, a wrong key type) stays what it is."""

    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            raise StoreUnavailable(f"Redis: {type(e).__name__}: {str(e)[:200]}") from None

    return call  # type: ignore[return-value]


class _Guarded(type(Store)):  # type: ignore[misc]
    """Wraps every public coroutine method of the class in `_guarded`."""

    def __new__(mcs, name: str, bases: tuple[type, ...], ns: dict[str, Any]) -> Any:
        for attr, value in list(ns.items()):
            if not attr.startswith("_") and inspect.iscoroutinefunction(value) and attr not in ("open", "close"):
                ns[attr] = _guarded(value)
        return super().__new__(mcs, name, bases, ns)


class RedisStore(Store, metaclass=_Guarded):
    shared = True

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.prefix = (query.pop("prefix", ["switchboard"])[0]) or "switchboard"
        self.url = urlunsplit(parts._replace(query="&".join(f"{k}={v[0]}" for k, v in query.items())))
        self.client: aioredis.Redis | None = None

    async def open(self) -> None:
        self.client = aioredis.from_url(
            self.url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=ANSWER_TIMEOUT,
            health_check_interval=15,  # a pooled connection idle that long is checked before use
        )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    @property
    def _r(self) -> aioredis.Redis:
        if self.client is None:
            raise RuntimeError("the Redis store is not open")
        return self.client

    async def ping(self) -> bool:
        return self.client is not None and bool(await self.client.ping())

    async def history(self, conversation: str, turns: int) -> list[Message]:
        key = f"{self.prefix}:t:{conversation}"

        async def read_tail(n: int) -> list[Message]:
            return [load_message(r) for r in await self._r.lrange(key, -n, -1)]

        return await tail_turns(read_tail, turns)

    async def append(self, conversation: str, messages: list[Message]) -> None:
        if not messages:
            return
        key = f"{self.prefix}:t:{conversation}"
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *[dump_message(m) for m in messages])
            pipe.ltrim(key, -TRANSCRIPT_CAP, -1)
            await pipe.execute()

    async def clear(self, conversation: str) -> None:
        await self._r.delete(f"{self.prefix}:t:{conversation}", f"{self.prefix}:s:{conversation}")

    async def get_state(self, conversation: str, provider: str) -> JSON | None:
        raw = await self._r.hget(f"{self.prefix}:s:{conversation}", provider)
        return orjson.loads(raw) if raw else None

    async def set_state(self, conversation: str, provider: str, value: JSON | None) -> None:
        key = f"{self.prefix}:s:{conversation}"
        if value is None:
            await self._r.hdel(key, provider)
        else:
            await self._r.hset(key, provider, orjson.dumps(value))

    async def claim(self, key: str, ttl: float) -> bool:
        return bool(await self._r.set(f"{self.prefix}:k:{key}", b"1", nx=True, px=max(1, int(ttl * 1000))))

    async def put(self, key: str, value: str, ttl: float | None = None) -> None:
        await self._r.set(f"{self.prefix}:k:{key}", value.encode(), px=int(ttl * 1000) if ttl else None)

    async def get(self, key: str) -> str | None:
        raw = await self._r.get(f"{self.prefix}:k:{key}")
        if raw is None:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    async def delete(self, key: str) -> None:
        await self._r.delete(f"{self.prefix}:k:{key}")

    # -- leased claims ---------------------------------------------------------------------------

    def _claim_keys(self, key: str) -> tuple[str, str]:
        return f"{self.prefix}:c:{key}", f"{self.prefix}:leases"

    async def claim_lease(self, key: str, *, owner: str, lease: float, ttl: float, payload: str | None = None) -> Claim:
        hkey, leases = self._claim_keys(key)
        args = [owner, _ms(lease), _ms(ttl), "0" if payload is None else "1", payload or ""]
        out = await self._r.eval(CLAIM, 3, hkey, leases, f"{self.prefix}:k:{key}", *args)  # type: ignore[misc]
        state = ClaimState(_text(out[0]))
        stored = _text(out[1]) if len(out) > 1 and out[1] is not None else None
        return Claim(state, stored if state is ClaimState.TAKEN_OVER else None)

    async def renew(self, key: str, *, owner: str, lease: float, payload: str | None = None) -> bool:
        hkey, leases = self._claim_keys(key)
        args = [owner, _ms(lease), "0" if payload is None else "1", payload or ""]
        return bool(await self._r.eval(RENEW, 2, hkey, leases, *args))  # type: ignore[misc]

    async def settle(self, key: str, ttl: float, *more: str) -> None:
        async with self._r.pipeline(transaction=True) as pipe:
            for k in (key, *more):
                hkey, leases = self._claim_keys(k)
                pipe.delete(hkey)
                pipe.hset(hkey, mapping={"owner": "", "until": 0, "done": "1"})
                pipe.pexpire(hkey, int(_ms(ttl)))
                pipe.zrem(leases, hkey)
            await pipe.execute()

    async def expired_claims(self, prefix: str, limit: int) -> list[tuple[str, str | None]]:
        _, leases = self._claim_keys("")
        secs, micros = await self._r.time()
        now = int(secs) * 1000 + int(micros) // 1000
        head = f"{self.prefix}:c:"
        found: list[tuple[str, str | None]] = []
        for raw in await self._r.zrangebyscore(leases, "-inf", now, start=0, num=max(limit * 4, 100)):
            hkey = _text(raw)  # type: ignore[arg-type]
            done, payload = await self._r.hmget(hkey, ["done", "payload"])
            if done is None or _text(done) != "0":  # settled or forgotten: not a lease any more
                await self._r.zrem(leases, hkey)
            elif hkey.startswith(head + prefix) and len(found) < limit:
                found.append((hkey[len(head) :], None if payload is None else _text(payload)))
        return found

    async def release_others(self, owner: str) -> int:
        return 0  # shared: a lease of another owner may belong to a live instance

    # -- usage -----------------------------------------------------------------------------------

    async def add_usage(self, rows: list[UsageRow]) -> None:
        """`<p>:u:<hour>` is a hash per hour; a field per combination and count (HINCRBY: the
        instances' counts add up)."""
        if not rows:
            return
        async with self._r.pipeline(transaction=False) as pipe:
            for r in rows:
                key, dims = f"{self.prefix}:u:{r.hour}", orjson.dumps(r.dims()).decode()
                for name, n in (("p", r.prompt), ("c", r.completion), ("n", r.requests), ("e", r.estimated)):
                    if n:
                        pipe.hincrby(key, f"{name}{dims}", n)
                pipe.expireat(key, r.hour + RETENTION)
            await pipe.execute()

    async def usage(self, since: float) -> list[UsageRow]:
        secs, _ = await self._r.time()
        hours = list(range(int(since // 3600 * 3600), int(secs) + 1, 3600))
        async with self._r.pipeline(transaction=False) as pipe:
            for h in hours:
                pipe.hgetall(f"{self.prefix}:u:{h}")
            found = await pipe.execute()
        rows: list[UsageRow] = []
        for hour, fields in zip(hours, found, strict=True):
            per: dict[str, UsageRow] = {}
            for raw_field, raw_n in fields.items():
                name = _text(raw_field)
                dims = name[1:]
                row = per.get(dims)
                if row is None:
                    row = per[dims] = UsageRow(hour, *orjson.loads(dims))
                n = int(raw_n)
                match name[0]:
                    case "p":
                        row.prompt = n
                    case "c":
                        row.completion = n
                    case "n":
                        row.requests = n
                    case "e":
                        row.estimated = n
            rows += per.values()
        return rows

    # -- the bus ---------------------------------------------------------------------------------

    async def publish(self, message: str) -> None:
        await self._r.publish(f"{self.prefix}:bus", message)

    async def listen(self) -> AsyncIterator[str]:  # type: ignore[override]
        pubsub = self._r.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(f"{self.prefix}:bus")
            yield ""  # subscribed
            while True:
                # a bounded wait, so a connection that died silently is noticed by the next read
                m = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                if m is None:
                    await pubsub.ping()
                elif m.get("type") == "message":
                    yield _text(m["data"])
        finally:
            await pubsub.aclose()

    # -- limits ----------------------------------------------------------------------------------

    async def hit(self, key: str, amount: int, window: float, limit: int) -> Hit:
        out = await self._r.eval(HIT, 1, f"{self.prefix}:w:{key}", amount, _ms(window), limit)  # type: ignore[misc]
        return Hit(bool(out[0]), int(out[1]), int(out[2]) / 1000)

    async def acquire(self, key: str, token: str, limit: int, lease: float) -> bool:
        return bool(await self._r.eval(ACQUIRE, 1, f"{self.prefix}:slots:{key}", token, limit, _ms(lease)))  # type: ignore[misc]

    async def release(self, key: str, token: str) -> None:
        await self._r.zrem(f"{self.prefix}:slots:{key}", token)


def _ms(seconds: float) -> str:
    return str(max(1, int(seconds * 1000)))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
