"""The Redis cache keeps one connection pool per process, whichever request context uses it."""

from __future__ import annotations

import asyncio

import pytest
import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache

from portal.cache import SharedPoolRedisCache

pytestmark = pytest.mark.redis

CONTEXTS = 20


def _connections_received() -> int:
    return redis.Redis.from_url(settings.REDIS_URL).info("stats")["total_connections_received"]


def _read_in_fresh_contexts(cache_of_context) -> int:
    """Read the cache once in each of CONTEXTS request-like contexts; return the connections opened."""

    async def one_request() -> None:
        await sync_to_async(lambda: cache_of_context().get("probe"))()

    before = _connections_received()
    for _ in range(CONTEXTS):
        asyncio.run(one_request())
    # The counting client's own connection is one of them.
    return _connections_received() - before - 1


def test_the_default_cache_is_the_shared_pool_backend() -> None:
    assert isinstance(caches["default"], SharedPoolRedisCache)


def test_request_contexts_share_one_connection() -> None:
    opened = _read_in_fresh_contexts(lambda: caches["default"])
    assert opened <= 1


def test_stock_backend_still_opens_a_connection_per_context() -> None:
    """The reason for portal/cache.py. When this fails, Django has fixed ticket #35651: drop the subclass."""
    opened = _read_in_fresh_contexts(lambda: RedisCache(settings.REDIS_URL, {}))
    assert opened >= CONTEXTS
