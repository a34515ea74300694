"""The Redis channel layer, with a send of one round trip.

channels-redis 4.3 sends a message in four round trips to Redis, one after the other: drop expired
messages, count the channel, add the message, renew the key's expiry. A command's push to its
device's process waits for all four (2.4 ms of a command's 26 ms round trip at 1,000 devices,
bench/README.md). Here the same four steps run as one script in Redis: same keys, same capacity
check (ChannelFull), same expiry; receiving is unchanged.
"""

from __future__ import annotations

import time
from typing import Any

from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer as _RedisChannelLayer

# KEYS[1]: the channel's sorted set. ARGV: expired before, capacity, message, now, expiry seconds.
_SEND = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
if redis.call('ZCOUNT', KEYS[1], '-inf', '+inf') >= tonumber(ARGV[2]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class RedisChannelLayer(_RedisChannelLayer):
    async def send(self, channel: str, message: dict[str, Any]) -> None:
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        assert "__asgi_channel__" not in message
        channel_non_local_name = channel
        if "!" in channel:  # a process-local channel: the message names it, the key is the process's
            message = {**message, "__asgi_channel__": channel}
            channel_non_local_name = self.non_local_name(channel)
        index = self.consistent_hash(channel) if "!" in channel else next(self._send_index_generator)
        connection = self.connection(index)
        now = time.time()
        added = await connection.eval(
            _SEND,
            1,
            self.prefix + channel_non_local_name,
            int(now) - int(self.expiry),
            self.get_capacity(channel),
            self.serialize(message),
            now,
            int(self.expiry),
        )
        if not added:
            raise ChannelFull()
