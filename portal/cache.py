"""Django's Redis cache with one connection pool per process.

Django keeps a cache object per thread and per asyncio context, and each `RedisCache` builds its
own `RedisCacheClient` with pools of its own (Django ticket #35651, open). Under Django's ASGI
handler every request ran in a context of its own, so every request opened, and dropped, a Redis
connection: the throttle's one read cost a TCP handshake and redis-py's driver metadata, a sixth of
an API request's CPU (bench/README.md, "What the benchmarks found"). Here the client, and with it its
pools, is shared by every cache object of the same settings in the process; redis-py's pools are
thread-safe and start anew in a forked child.
"""

from __future__ import annotations

import re
import threading
from typing import Any, ClassVar

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django.utils.functional import cached_property


class SharedPoolRedisCache(RedisCache):
    _clients: ClassVar[dict[str, RedisCacheClient]] = {}
    _clients_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._shared_servers = re.split("[;,]", server) if isinstance(server, str) else server
        self._shared_options = params.get("OPTIONS", {})
        self._shared_key = repr((self._shared_servers, sorted(self._shared_options.items())))

    @cached_property
    def _cache(self) -> RedisCacheClient:
        with self._clients_lock:
            client = self._clients.get(self._shared_key)
            if client is None:
                client = self._clients[self._shared_key] = RedisCacheClient(
                    self._shared_servers, **self._shared_options
                )
        return client
