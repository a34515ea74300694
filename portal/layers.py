"""The Redis channel layer, with sends of fewer round trips.

channels-redis 4.3 sends a message in four round trips to Redis, one after the other: drop expired
messages, count the channel, add the message, renew the key's expiry. A command's push to its
device's process waits for all four (2.4 ms of a command's 26 ms round trip at 1,000 devices,
bench/README.md). Here the same four steps run as one script in Redis: same keys, same capacity
check (ChannelFull), same expiry. A group send took four round trips too (drop expired members,
read the members, drop expired messages of each member's channel, the script that adds them); with
one Redis server here it takes two: the members read in one pipeline, the rest in one script. Each
command's status reaches browsers through a group send three times, from the worker that holds the
device, while it handles the device's next frame. Receiving is unchanged.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer as _RedisChannelLayer

logger = logging.getLogger(__name__)

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


# KEYS: the channels' sorted sets. ARGV: one message per key, one capacity per key, then expired
# before, now, expiry seconds. Returns how many channels were over capacity (their message dropped,
# as channels-redis does).
_GROUP_SEND = """
local expired_before = ARGV[#ARGV - 2]
local now = ARGV[#ARGV - 1]
local expiry = ARGV[#ARGV]
local over_capacity = 0
for i = 1, #KEYS do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, expired_before)
    if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[i + #KEYS]) then
        redis.call('ZADD', KEYS[i], now, ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
    else
        over_capacity = over_capacity + 1
    end
end
return over_capacity
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

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        if self.ring_size != 1:  # channels on several Redis servers: the library's way
            await super().group_send(group, message)
            return
        assert self.require_valid_group_name(group), "Group name not valid"
        connection = self.connection(0)
        key = self._group_key(group)
        now = time.time()
        pipe = connection.pipeline(transaction=False)
        pipe.zremrangebyscore(key, min=0, max=int(now) - self.group_expiry)
        pipe.zrange(key, 0, -1)
        _, members = await pipe.execute()
        if not members:
            return
        _, messages, capacities = self._map_channel_keys_to_connection(
            [member.decode("utf8") for member in members], message
        )
        keys = list(messages)
        over_capacity = await connection.eval(
            _GROUP_SEND,
            len(keys),
            *keys,
            *(messages[key] for key in keys),
            *(capacities[key] for key in keys),
            int(now) - int(self.expiry),
            now,
            int(self.expiry),
        )
        if over_capacity:
            logger.info("%s of %s channels over capacity in group %s", over_capacity, len(members), group)
