"""redis://host:6379/0 (or rediss://) — shared state for several Switchboard instances.

Keys live under a prefix (`?prefix=name`, default `switchboard`): `<p>:t:<conversation>` is the
transcript (a list, trimmed to the cap), `<p>:s:<conversation>` the provider states (a hash),
`<p>:k:<key>` small values; claims are `SET NX EX`, atomic across instances.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis

from proxy.contracts import Store
from proxy.store import TRANSCRIPT_CAP, dump_message, load_message, tail_turns
from proxy.types import JSON, Message


class RedisStore(Store):
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.prefix = (query.pop("prefix", ["switchboard"])[0]) or "switchboard"
        self.url = urlunsplit(parts._replace(query="&".join(f"{k}={v[0]}" for k, v in query.items())))
        self.client: aioredis.Redis | None = None

    async def open(self) -> None:
        self.client = aioredis.from_url(self.url, socket_connect_timeout=5, socket_timeout=10)

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
