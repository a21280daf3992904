"""Every store under test (memory, SQLite in a real file, Redis on the real redis-server of
`redis_url`), for the suites that run against all three."""

from __future__ import annotations

import uuid

import pytest

from proxy.engine import open_store


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request, tmp_path):
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sub/dir/s.db"
    return request.getfixturevalue("redis_url") + f"?prefix=t{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def store(store_url):
    s = open_store(store_url)
    await s.open()
    yield s
    await s.close()
