"""Shared fixtures of the provider tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """The outbound HTTP client a provider is built with, as the engine makes one."""
    async with aiohttp.ClientSession() as s:
        yield s
