"""sqlite:///relative/path.db or sqlite:////absolute/path.db — the embedded default.

One aiosqlite connection (its own thread, so no blocking I/O on the event loop), WAL mode.
The file and its directory are created on first run. Claims are atomic (INSERT OR IGNORE after
purging an expired row in the same transaction), so a message is answered once even across a
restart. Writes are serialised by a lock: two coroutines never share one open transaction.

Leased claims (see `proxy.contracts.Store`) live in `claims`, added by schema 2; opening a
schema-1 file adds the table and carries its `seen:` dedupe markers over as answered claims.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiosqlite
import orjson

from proxy.contracts import Claim, ClaimState, Hit, Store, UsageRow
from proxy.store import TRANSCRIPT_CAP, dump_message, load_message, tail_turns, window_end
from proxy.types import JSON, Message
from proxy.usage import RETENTION

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, conversation TEXT NOT NULL, body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS messages_conv ON messages (conversation, id);
CREATE TABLE IF NOT EXISTS states (
    conversation TEXT NOT NULL, provider TEXT NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (conversation, provider));
CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL, expires REAL);
CREATE TABLE IF NOT EXISTS claims (
    k TEXT PRIMARY KEY, owner TEXT NOT NULL, until REAL NOT NULL, expires REAL NOT NULL,
    done INTEGER NOT NULL DEFAULT 0, payload TEXT);
CREATE INDEX IF NOT EXISTS claims_open ON claims (done, until);
CREATE TABLE IF NOT EXISTS counters (k TEXT PRIMARY KEY, ends REAL NOT NULL, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS slots (k TEXT NOT NULL, token TEXT NOT NULL, until REAL NOT NULL, PRIMARY KEY (k, token));
CREATE TABLE IF NOT EXISTS usage (
    hour INTEGER NOT NULL, channel TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
    key TEXT NOT NULL, platform TEXT NOT NULL, user TEXT NOT NULL,
    prompt INTEGER NOT NULL, completion INTEGER NOT NULL, requests INTEGER NOT NULL, estimated INTEGER NOT NULL,
    PRIMARY KEY (hour, channel, provider, model, key, platform, user));
"""
ADD_USAGE = """
INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (hour, channel, provider, model, key, platform, user) DO UPDATE SET
    prompt = prompt + excluded.prompt, completion = completion + excluded.completion,
    requests = requests + excluded.requests, estimated = estimated + excluded.estimated
"""
#: One statement (atomic on its own): a new window starts the count at the amount; an old one is
#: counted from zero; the amount is added only while the count stays within the limit (?4), and
#: `amount` 0 asks whether one more fits. Returns the count after the hit, or no row when refused.
HIT = """
INSERT INTO counters (k, ends, n) SELECT ?1, ?2, ?3 WHERE max(?3, 1) <= ?4
ON CONFLICT (k) DO UPDATE SET
    n = CASE WHEN ends = excluded.ends THEN n + excluded.n ELSE excluded.n END, ends = excluded.ends
    WHERE (CASE WHEN ends = excluded.ends THEN n ELSE 0 END) + max(excluded.n, 1) <= ?4
RETURNING n
"""
#: Schema 1 → 2: dedupe markers of the old `claim` become answered leased claims.
MIGRATE_1 = """
INSERT OR IGNORE INTO claims (k, owner, until, expires, done)
    SELECT k, '', 0, COALESCE(expires, 1e12), 1 FROM kv WHERE k LIKE 'seen:%';
"""
#: Seconds between sweeps of expired claims and values.
PURGE_EVERY = 300.0


def sqlite_path(url: str) -> str:
    """`sqlite:///data/x.db` → `data/x.db`; `sqlite:////var/x.db` → `/var/x.db`."""
    path = url.split("://", 1)[1].split("?", 1)[0]
    if path.startswith("/"):
        path = path[1:]
    if not path:
        raise ValueError("the sqlite URL names no file (sqlite:///data/switchboard.db)")
    return path


class SQLiteStore(Store):
    def __init__(self, url: str) -> None:
        self.path = sqlite_path(url)
        self.db: aiosqlite.Connection | None = None
        self._tx = asyncio.Lock()
        self._next_purge = 0.0

    async def open(self) -> None:
        folder = os.path.dirname(self.path)
        if folder:
            await asyncio.to_thread(os.makedirs, folder, exist_ok=True)
        self.db = await aiosqlite.connect(self.path, isolation_level=None)
        await self.db.execute("PRAGMA journal_mode=WAL")
        await self.db.execute("PRAGMA synchronous=NORMAL")
        async with self.db.execute("SELECT name FROM sqlite_master WHERE name = 'meta'") as cur:
            fresh = await cur.fetchone() is None
        await self.db.executescript(SCHEMA)
        await self.db.execute("INSERT OR IGNORE INTO meta (k, v) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        async with self.db.execute("SELECT v FROM meta WHERE k = 'schema'") as cur:
            row = await cur.fetchone()
        found = SCHEMA_VERSION if row is None or fresh else int(row[0])
        if found > SCHEMA_VERSION:
            await self.close()
            raise RuntimeError(f"{self.path} was written by a newer Switchboard (schema {found})")
        if found < 2:
            async with self._transaction("BEGIN IMMEDIATE") as db:
                await db.execute(MIGRATE_1)
                await db.execute("UPDATE meta SET v = ? WHERE k = 'schema'", (str(SCHEMA_VERSION),))

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()
            self.db = None

    @property
    def _db(self) -> aiosqlite.Connection:
        if self.db is None:
            raise RuntimeError("the SQLite store is not open")
        return self.db

    @asynccontextmanager
    async def _transaction(self, begin: str = "BEGIN") -> AsyncIterator[aiosqlite.Connection]:
        async with self._tx:
            db = self._db
            await db.execute(begin)
            try:
                yield db
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    async def ping(self) -> bool:
        if self.db is None:
            return False
        async with self.db.execute("SELECT 1") as cur:
            return (await cur.fetchone()) is not None

    async def history(self, conversation: str, turns: int) -> list[Message]:
        async def read_tail(n: int) -> list[Message]:
            async with self._db.execute(
                "SELECT body FROM messages WHERE conversation = ? ORDER BY id DESC LIMIT ?", (conversation, n)
            ) as cur:
                rows = await cur.fetchall()
            return [load_message(r[0]) for r in reversed(list(rows))]

        return await tail_turns(read_tail, turns)

    async def append(self, conversation: str, messages: list[Message]) -> None:
        if not messages:
            return
        async with self._transaction() as db:
            await db.executemany(
                "INSERT INTO messages (conversation, body) VALUES (?, ?)",
                [(conversation, dump_message(m)) for m in messages],
            )
            await db.execute(
                "DELETE FROM messages WHERE conversation = ? AND id <= "
                "(SELECT id FROM messages WHERE conversation = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (conversation, conversation, TRANSCRIPT_CAP),
            )

    async def clear(self, conversation: str) -> None:
        async with self._transaction() as db:
            await db.execute("DELETE FROM messages WHERE conversation = ?", (conversation,))
            await db.execute("DELETE FROM states WHERE conversation = ?", (conversation,))

    async def get_state(self, conversation: str, provider: str) -> JSON | None:
        async with self._db.execute(
            "SELECT body FROM states WHERE conversation = ? AND provider = ?", (conversation, provider)
        ) as cur:
            row = await cur.fetchone()
        return orjson.loads(row[0]) if row else None

    async def set_state(self, conversation: str, provider: str, value: JSON | None) -> None:
        async with self._transaction() as db:
            if value is None:
                await db.execute("DELETE FROM states WHERE conversation = ? AND provider = ?", (conversation, provider))
            else:
                await db.execute(
                    "INSERT OR REPLACE INTO states (conversation, provider, body) VALUES (?, ?, ?)",
                    (conversation, provider, orjson.dumps(value)),
                )

    async def claim(self, key: str, ttl: float) -> bool:
        now = time.time()
        # IMMEDIATE: a second process sharing the file waits instead of racing us.
        async with self._transaction("BEGIN IMMEDIATE") as db:
            await self._purge_now_and_then(db, now)
            await db.execute("DELETE FROM kv WHERE k = ? AND expires IS NOT NULL AND expires <= ?", (key, now))
            cur = await db.execute("INSERT OR IGNORE INTO kv (k, v, expires) VALUES (?, '1', ?)", (key, now + ttl))
            return cur.rowcount == 1

    async def _purge_now_and_then(self, db: aiosqlite.Connection, now: float) -> None:
        if now >= self._next_purge:
            self._next_purge = now + PURGE_EVERY
            await db.execute("DELETE FROM kv WHERE expires IS NOT NULL AND expires <= ?", (now,))
            await db.execute("DELETE FROM claims WHERE expires <= ?", (now,))
            await db.execute("DELETE FROM counters WHERE ends <= ?", (now,))
            await db.execute("DELETE FROM slots WHERE until <= ?", (now,))
            await db.execute("DELETE FROM usage WHERE hour <= ?", (now - RETENTION,))

    async def claim_lease(self, key: str, *, owner: str, lease: float, ttl: float, payload: str | None = None) -> Claim:
        now = time.time()
        if now >= self._next_purge:
            async with self._transaction() as db:
                await self._purge_now_and_then(db, now)
        new = await self._write(  # the common case: one statement, atomic on its own
            "INSERT INTO claims (k, owner, until, expires, done, payload) VALUES (?, ?, ?, ?, 0, ?) "
            "ON CONFLICT (k) DO NOTHING",
            (key, owner, now + lease, now + ttl, payload),
        )
        if new == 1:
            return Claim(ClaimState.NEW)
        async with self._transaction("BEGIN IMMEDIATE") as db:
            async with db.execute("SELECT until, expires, done, payload FROM claims WHERE k = ?", (key,)) as cur:
                row = await cur.fetchone()
            if row is None or row[1] <= now:
                await db.execute(
                    "INSERT OR REPLACE INTO claims (k, owner, until, expires, done, payload) VALUES (?, ?, ?, ?, 0, ?)",
                    (key, owner, now + lease, now + ttl, payload),
                )
                return Claim(ClaimState.NEW)
            if row[2]:
                return Claim(ClaimState.DONE)
            if row[0] > now:
                return Claim(ClaimState.IN_FLIGHT)
            await db.execute("UPDATE claims SET owner = ?, until = ? WHERE k = ?", (owner, now + lease, key))
            return Claim(ClaimState.TAKEN_OVER, row[3])

    async def renew(self, key: str, *, owner: str, lease: float, payload: str | None = None) -> bool:
        now = time.time()
        changed = await self._write(
            "UPDATE claims SET until = ?, payload = COALESCE(?, payload) "
            "WHERE k = ? AND owner = ? AND done = 0 AND expires > ?",
            (now + lease, payload, key, owner, now),
        )
        return changed == 1

    async def settle(self, key: str, ttl: float, *more: str) -> None:
        now = time.time()
        settle = "INSERT OR REPLACE INTO claims (k, owner, until, expires, done, payload) VALUES (?, '', ?, ?, 1, NULL)"
        if not more:
            await self._write(settle, (key, now, now + ttl))
            return
        async with self._transaction() as db:
            await db.executemany(settle, [(k, now, now + ttl) for k in (key, *more)])

    async def _write(self, sql: str, args: tuple[object, ...]) -> int:
        """One statement outside any transaction of ours (SQLite makes it atomic): one trip to the
        connection's thread instead of three; the lock keeps it out of another coroutine's open
        transaction. Returns the rows changed."""
        async with self._tx:
            async with self._db.execute(sql, args) as cur:
                return cur.rowcount

    async def expired_claims(self, prefix: str, limit: int) -> list[tuple[str, str | None]]:
        now = time.time()
        async with self._db.execute(
            "SELECT k, payload FROM claims WHERE done = 0 AND until <= ? AND expires > ? AND substr(k, 1, ?) = ? "
            "ORDER BY until LIMIT ?",
            (now, now, len(prefix), prefix, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [(str(r[0]), r[1]) for r in rows]

    async def release_others(self, owner: str) -> int:
        now = time.time()
        async with self._transaction("BEGIN IMMEDIATE") as db:
            cur = await db.execute(
                "UPDATE claims SET until = ? WHERE done = 0 AND owner != ? AND until > ?", (now, owner, now)
            )
            return cur.rowcount

    async def hit(self, key: str, amount: int, window: float, limit: int) -> Hit:
        now = time.time()
        end = window_end(now, window)
        async with self._tx:  # one trip to the connection's thread
            rows = list(await self._db.execute_fetchall(HIT, (key, end, amount, limit)))
        if rows:
            return Hit(True, limit - int(rows[0][0]), end - now)
        async with self._db.execute("SELECT n, ends FROM counters WHERE k = ?", (key,)) as cur:
            row = await cur.fetchone()  # refused: how much is left (only for the answer)
        count = int(row[0]) if row is not None and row[1] == end else 0
        return Hit(False, max(0, limit - count), end - now)

    async def acquire(self, key: str, token: str, limit: int, lease: float) -> bool:
        now = time.time()
        async with self._transaction("BEGIN IMMEDIATE") as db:
            await db.execute("DELETE FROM slots WHERE k = ? AND until <= ?", (key, now))
            cur = await db.execute(
                "INSERT INTO slots (k, token, until) SELECT ?, ?, ? WHERE (SELECT count(*) FROM slots WHERE k = ?) < ?",
                (key, token, now + lease, key, limit),
            )
            return cur.rowcount == 1

    async def release(self, key: str, token: str) -> None:
        await self._write("DELETE FROM slots WHERE k = ? AND token = ?", (key, token))

    async def put(self, key: str, value: str, ttl: float | None = None) -> None:
        now = time.time()
        async with self._transaction() as db:
            await self._purge_now_and_then(db, now)
            await db.execute(
                "INSERT OR REPLACE INTO kv (k, v, expires) VALUES (?, ?, ?)", (key, value, now + ttl if ttl else None)
            )

    async def get(self, key: str) -> str | None:
        async with self._db.execute("SELECT v, expires FROM kv WHERE k = ?", (key,)) as cur:
            row = await cur.fetchone()
        if row is None or (row[1] is not None and row[1] <= time.time()):
            return None
        return str(row[0])

    async def delete(self, key: str) -> None:
        async with self._transaction() as db:
            await db.execute("DELETE FROM kv WHERE k = ?", (key,))

    async def add_usage(self, rows: list[UsageRow]) -> None:
        if not rows:
            return
        async with self._transaction() as db:
            values = [(r.hour, *r.dims(), r.prompt, r.completion, r.requests, r.estimated) for r in rows]
            await db.executemany(ADD_USAGE, values)

    async def usage(self, since: float) -> list[UsageRow]:
        first = int(since // 3600 * 3600)
        async with self._db.execute("SELECT * FROM usage WHERE hour >= ?", (first,)) as cur:
            return [UsageRow(*row) for row in await cur.fetchall()]
