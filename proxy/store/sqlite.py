"""sqlite:///relative/path.db or sqlite:////absolute/path.db — the embedded default.

One aiosqlite connection (its own thread, so no blocking I/O on the event loop), WAL mode.
The file and its directory are created on first run. Claims are atomic (INSERT OR IGNORE after
purging an expired row in the same transaction), so a message is answered once even across a
restart.
"""

from __future__ import annotations

import asyncio
import os
import time

import aiosqlite
import orjson

from proxy.contracts import Store
from proxy.store import TRANSCRIPT_CAP, dump_message, last_turns, load_message
from proxy.types import JSON, Message

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, conversation TEXT NOT NULL, body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS messages_conv ON messages (conversation, id);
CREATE TABLE IF NOT EXISTS states (
    conversation TEXT NOT NULL, provider TEXT NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (conversation, provider));
CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL, expires REAL);
"""


def sqlite_path(url: str) -> str:
    """`sqlite:///data/x.db` → `data/x.db`; `sqlite:////var/x.db` → `/var/x.db`."""
    path = url.split("://", 1)[1]
    if path.startswith("/"):
        path = path[1:]
    if not path:
        raise ValueError("the sqlite URL names no file (sqlite:///data/switchboard.db)")
    return path.split("?", 1)[0]


class SQLiteStore(Store):
    def __init__(self, url: str) -> None:
        self.path = sqlite_path(url)
        self.db: aiosqlite.Connection | None = None
        self._tx = asyncio.Lock()  # one multi-statement transaction at a time on the connection

    async def open(self) -> None:
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        self.db = await aiosqlite.connect(self.path, isolation_level=None)
        await self.db.execute("PRAGMA journal_mode=WAL")
        await self.db.execute("PRAGMA synchronous=NORMAL")
        await self.db.executescript(SCHEMA)
        await self.db.execute("INSERT OR IGNORE INTO meta (k, v) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()
            self.db = None

    @property
    def _db(self) -> aiosqlite.Connection:
        if self.db is None:
            raise RuntimeError("the SQLite store is not open")
        return self.db

    async def ping(self) -> bool:
        async with self._db.execute("SELECT 1") as cur:
            return (await cur.fetchone()) is not None

    async def history(self, conversation: str, turns: int) -> list[Message]:
        if turns <= 0:
            return []
        # Read a generous tail (turns usually hold 2 messages; tool turns more), slice exchanges.
        async with self._db.execute(
            "SELECT body FROM messages WHERE conversation = ? ORDER BY id DESC LIMIT ?",
            (conversation, max(8, turns * 6)),
        ) as cur:
            rows = await cur.fetchall()
        return last_turns([load_message(r[0]) for r in list(rows)[::-1]], turns)

    async def append(self, conversation: str, messages: list[Message]) -> None:
        async with self._tx:
            await self._append(conversation, messages)

    async def _append(self, conversation: str, messages: list[Message]) -> None:
        db = self._db
        await db.execute("BEGIN")
        try:
            await db.executemany(
                "INSERT INTO messages (conversation, body) VALUES (?, ?)",
                [(conversation, dump_message(m)) for m in messages],
            )
            await db.execute(
                "DELETE FROM messages WHERE conversation = ? AND id <= "
                "(SELECT id FROM messages WHERE conversation = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (conversation, conversation, TRANSCRIPT_CAP),
            )
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    async def clear(self, conversation: str) -> None:
        async with self._tx:
            db = self._db
            await db.execute("BEGIN")
            await db.execute("DELETE FROM messages WHERE conversation = ?", (conversation,))
            await db.execute("DELETE FROM states WHERE conversation = ?", (conversation,))
            await db.execute("COMMIT")

    async def get_state(self, conversation: str, provider: str) -> JSON | None:
        async with self._db.execute(
            "SELECT body FROM states WHERE conversation = ? AND provider = ?", (conversation, provider)
        ) as cur:
            row = await cur.fetchone()
        return orjson.loads(row[0]) if row else None

    async def set_state(self, conversation: str, provider: str, value: JSON | None) -> None:
        async with self._tx:  # never inside another coroutine's open transaction
            await self._set_state(conversation, provider, value)

    async def _set_state(self, conversation: str, provider: str, value: JSON | None) -> None:
        if value is None:
            await self._db.execute(
                "DELETE FROM states WHERE conversation = ? AND provider = ?", (conversation, provider)
            )
        else:
            await self._db.execute(
                "INSERT OR REPLACE INTO states (conversation, provider, body) VALUES (?, ?, ?)",
                (conversation, provider, orjson.dumps(value)),
            )

    async def claim(self, key: str, ttl: float) -> bool:
        async with self._tx:
            return await self._claim(key, ttl)

    async def _claim(self, key: str, ttl: float) -> bool:
        now = time.time()
        db = self._db
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute("DELETE FROM kv WHERE k = ? AND expires IS NOT NULL AND expires <= ?", (key, now))
            cur = await db.execute("INSERT OR IGNORE INTO kv (k, v, expires) VALUES (?, '1', ?)", (key, now + ttl))
            first = cur.rowcount == 1
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        if first and int(now) % 64 == 0:  # now and then, purge what expired
            await db.execute("DELETE FROM kv WHERE expires IS NOT NULL AND expires <= ?", (now,))
        return first

    async def put(self, key: str, value: str, ttl: float | None = None) -> None:
        async with self._tx:
            await self._db.execute(
                "INSERT OR REPLACE INTO kv (k, v, expires) VALUES (?, ?, ?)",
                (key, value, time.time() + ttl if ttl else None),
            )

    async def get(self, key: str) -> str | None:
        async with self._db.execute("SELECT v, expires FROM kv WHERE k = ?", (key,)) as cur:
            row = await cur.fetchone()
        if row is None or (row[1] is not None and row[1] <= time.time()):
            return None
        return str(row[0])

    async def delete(self, key: str) -> None:
        async with self._tx:
            await self._db.execute("DELETE FROM kv WHERE k = ?", (key,))
