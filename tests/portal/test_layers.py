"""The Redis channel layer's one-round-trip send keeps channels-redis's semantics."""

from __future__ import annotations

import pytest
import redis
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings

from portal.layers import RedisChannelLayer

pytestmark = pytest.mark.redis


def _layer(**config) -> RedisChannelLayer:
    return RedisChannelLayer(hosts=[{"address": settings.REDIS_URL}], prefix="test-layers", **config)


async def test_the_configured_layer_is_this_one() -> None:
    assert isinstance(get_channel_layer(), RedisChannelLayer)


async def test_it_sends_to_a_process_channel_in_one_round_trip_and_renews_the_expiry(monkeypatch) -> None:
    layer = _layer(expiry=30)
    channel = await layer.new_channel()
    connection = layer.connection(layer.consistent_hash(channel))
    commands: list[str] = []
    execute = type(connection).execute_command

    async def counting(self, *args, **options):
        commands.append(args[0])
        return await execute(self, *args, **options)

    monkeypatch.setattr(type(connection), "execute_command", counting)
    await layer.send(channel, {"type": "device.commands", "connections": ["x#1"]})
    monkeypatch.undo()

    assert commands == ["EVAL"]
    key = layer.prefix + layer.non_local_name(channel)
    assert 0 < redis.Redis.from_url(settings.REDIS_URL).ttl(key) <= 30
    assert await layer.receive(channel) == {"type": "device.commands", "connections": ["x#1"]}
    await layer.flush()


async def test_it_refuses_past_capacity_and_drops_expired_messages_first() -> None:
    layer = _layer(capacity=2)
    await layer.send("work", {"type": "a"})
    await layer.send("work", {"type": "b"})
    with pytest.raises(ChannelFull):
        await layer.send("work", {"type": "c"})

    client = redis.Redis.from_url(settings.REDIS_URL)
    key = layer.prefix + "work"
    client.zadd(key, {next(iter(client.zrange(key, 0, 0))): 1})  # one message sent long ago
    await layer.send("work", {"type": "d"})  # room again: the expired one is gone

    assert [(await layer.receive("work"))["type"] for _ in range(2)] == ["b", "d"]
    await layer.flush()


async def test_a_group_send_reaches_every_member_in_two_round_trips(monkeypatch) -> None:
    layer = _layer()
    specific = await layer.new_channel()
    await layer.group_add("fleet", specific)
    await layer.group_add("fleet", "plain")
    connection = layer.connection(0)
    commands: list[str] = []
    execute = type(connection).execute_command
    pipeline_class = type(connection.pipeline())
    pipeline_execute = pipeline_class.execute

    async def counting(self, *args, **options):
        commands.append(args[0])
        return await execute(self, *args, **options)

    async def counting_pipeline(self, *args, **options):
        commands.append("PIPELINE")
        return await pipeline_execute(self, *args, **options)

    monkeypatch.setattr(type(connection), "execute_command", counting)
    monkeypatch.setattr(pipeline_class, "execute", counting_pipeline)
    await layer.group_send("fleet", {"type": "live.updates", "events": [1]})
    monkeypatch.undo()

    assert commands == ["PIPELINE", "EVAL"]
    assert await layer.receive(specific) == {"type": "live.updates", "events": [1]}
    assert await layer.receive("plain") == {"type": "live.updates", "events": [1]}
    await layer.flush()


async def test_a_group_send_skips_a_full_channel_and_forgets_expired_members() -> None:
    layer = _layer(capacity=1, group_expiry=60)
    await layer.group_add("fleet", "full")
    await layer.group_add("fleet", "room")
    await layer.group_add("fleet", "gone")
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.zadd(layer._group_key("fleet"), {"gone": 1})  # joined long ago, never renewed
    await layer.send("full", {"type": "first"})

    await layer.group_send("fleet", {"type": "second"})

    assert client.zrange(layer._group_key("fleet"), 0, -1) == [b"full", b"room"]
    assert client.zcard(layer.prefix + "gone") == 0
    assert (await layer.receive("full"))["type"] == "first"
    assert (await layer.receive("room"))["type"] == "second"
    assert client.zcard(layer.prefix + "full") == 0
    await layer.flush()
