"""Pushes through the channel layer: to a device's live connection, and to admins' browsers.

A push only tells its receiver to look at the database or shows a change already stored, so a push
the layer drops costs a delay, never data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)
PUSHES_IN_FLIGHT = 50


def devices_group_name(tenant_id: int) -> str:
    """The group of a tenant's browsers that watch devices (one group per tenant, not per device)."""
    return f"tenant.{tenant_id}.devices"


# A device's connection name is its process's channel, this, and a number (devices.consumers).
CONNECTION_SEPARATOR = "#"
# Connections named in one layer message at most.
CONNECTIONS_PER_MESSAGE = 500


def send_to_device_channel(channel: str, message: dict[str, Any]) -> None:
    send_to_device_channels([channel], message)


def send_to_device_channels(channels: list[str], message: dict[str, Any]) -> None:
    if channels and not outbox.put(_DEVICES, tuple(channels), message):
        async_to_sync(send_to_device_channels_async)(channels, message)


async def send_to_device_channels_async(channels: list[str], message: dict[str, Any]) -> None:
    """Send `message` to device connections: one layer message per process, naming its connections.

    Failures are logged, not raised: the worker's sweep delivers the commands within seconds, and
    a device collects them anyway when it (re)connects.
    """
    layer = get_channel_layer()
    if layer is None or not channels:
        return
    by_process: dict[str, list[str]] = {}
    for name in channels:
        process, separator, _ = name.rpartition(CONNECTION_SEPARATOR)
        by_process.setdefault(process if separator else name, []).append(name)
    messages = [
        (process, {**message, "connections": names[start : start + CONNECTIONS_PER_MESSAGE]})
        for process, names in by_process.items()
        for start in range(0, len(names), CONNECTIONS_PER_MESSAGE)
    ]
    # At most this many sends in flight: 10,000 sends at once ran the layer out of Redis
    # connections (MaxConnectionsError) for 99 % of them.
    in_flight = asyncio.Semaphore(PUSHES_IN_FLIGHT)

    async def send_one(process: str, batch: dict[str, Any]) -> None:
        async with in_flight:
            await layer.send(process, batch)

    results = await asyncio.gather(*(send_one(*pair) for pair in messages), return_exceptions=True)
    failures = [result for result in results if isinstance(result, BaseException)]
    if failures:
        logger.warning("%d of %d pushes to devices failed: %r", len(failures), len(messages), failures[0])


def _to_browsers(tenant_id: int, event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None or outbox.put(_BROWSERS, tenant_id, event):
        return
    try:
        async_to_sync(layer.group_send)(devices_group_name(tenant_id), {"type": "live.update", "event": event})
    except Exception as error:  # the layer is down: browsers resynchronise when their socket reconnects
        logger.warning("A live update to tenant %s's browsers was dropped: %s", tenant_id, error)


def _presence_event(device_pk: int, is_live: bool) -> dict[str, Any]:
    return {"kind": "device_presence", "device": device_pk, "live": is_live}


def device_presence(tenant_id: int, device_pk: int, *, is_live: bool, batched: bool = False) -> None:
    """Tell the tenant's browsers a device came or went; `batched` (the device socket's own
    connects and disconnects) joins the process's next presence message when one is due."""
    if batched and presence_batch.add(tenant_id, device_pk, is_live):
        return
    _to_browsers(tenant_id, _presence_event(device_pk, is_live))


class PresenceBatch:
    """Presence changes of one process's devices, sent to browsers as one message per tenant.

    A message per connect cost a fifth of a worker's CPU in a reconnect storm (a thread hop and a
    Redis group send each); batched, 10,000 devices coming back cost a few messages a second.
    Only the latest state of a device is kept. Changes wait only while the outbox runs on a live
    event loop (a process with device sockets runs one); otherwise they are sent at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, dict[int, bool]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def add(self, tenant_id: int, device_pk: int, is_live: bool) -> bool:
        loop = self.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return False
        with self._lock:
            self._pending.setdefault(tenant_id, {})[device_pk] = is_live
        return True

    def take(self) -> dict[int, dict[int, bool]]:
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending


presence_batch = PresenceBatch()
# Events in one group message at most: a browser gets them as separate frames either way.
EVENTS_PER_MESSAGE = 500


async def presence_flush() -> None:
    """Send the batched presence changes: one group message per tenant (and per 500 changes)."""
    layer = get_channel_layer()
    for tenant_id, changes in presence_batch.take().items():
        if layer is not None:
            events = [_presence_event(device_pk, is_live) for device_pk, is_live in changes.items()]
            await _send_events(layer, tenant_id, events)


async def _send_events(layer: Any, tenant_id: int, events: list[dict[str, Any]]) -> None:
    """Send a tenant's browsers these events: one group message per 500, each shown as a frame."""
    for start in range(0, len(events), EVENTS_PER_MESSAGE):
        message = {"type": "live.updates", "events": events[start : start + EVENTS_PER_MESSAGE]}
        try:
            await layer.group_send(devices_group_name(tenant_id), message)
        except Exception as error:  # browsers resynchronise when their socket reconnects
            logger.warning("Live updates to tenant %s's browsers were dropped: %s", tenant_id, error)


_DEVICES, _BROWSERS = "devices", "browsers"


class Outbox:
    """The layer sends of one server process, made by one task on its event loop (Outbox.run).

    put() may be called from any thread (services run in the thread pool): it hands the send to
    the loop and returns at once, instead of holding the thread until Redis has answered. What
    piles up while a send is in flight goes out together next: a tenant's browser events in one
    `live.updates` message, in order, and pushes to devices in one message per process
    (send_to_device_channels_async). The batched presence changes go from the same task. With
    one sender, a process needs one Redis connection for all it sends: a send from each thread of
    the pool, and from each handshake that replaced a connection, had opened a connection each,
    and the pool kept them after a reconnect storm (redis-py pools keep their peak).

    put() returns False where no outbox runs (Celery, a management command, a test without a
    device socket): the caller sends at once, as before.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[str, Any, dict[str, Any]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    def put(self, kind: str, target: Any, message: dict[str, Any]) -> bool:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed() or not loop.is_running():
            return False
        with self._lock:
            self._pending.append((kind, target, message))
        loop.call_soon_threadsafe(wake.set)
        return True

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take sends for `loop` from now on, before run() has started on it: a handshake served in
        the same turn of the loop may already have something to send."""
        if self._loop is loop and self._wake is not None:
            return
        with self._lock:
            self._pending = []  # left by a loop that closed (tests run a loop each)
        self._loop, self._wake = loop, asyncio.Event()
        presence_batch.loop = loop

    async def run(self) -> None:
        self.bind(asyncio.get_running_loop())
        wake = self._wake
        assert self._loop is not None and wake is not None
        next_presence = self._loop.time() + PRESENCE_FLUSH_SECONDS
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=max(0.0, next_presence - self._loop.time()))
                wake.clear()
                with self._lock:
                    pending, self._pending = self._pending, []
                await _send_together(pending)
                if self._loop.time() >= next_presence:
                    next_presence = self._loop.time() + PRESENCE_FLUSH_SECONDS
                    await presence_flush()
        finally:
            if self._wake is wake:
                self._loop = self._wake = None


async def _send_together(pending: list[tuple[str, Any, dict[str, Any]]]) -> None:
    layer = get_channel_layer()
    if layer is None or not pending:
        return
    events: dict[int, list[dict[str, Any]]] = {}
    pushes: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for kind, target, message in pending:
        if kind == _BROWSERS:
            events.setdefault(target, []).append(message)
        else:
            key = json.dumps(message, sort_keys=True)
            pushes.setdefault(key, (message, []))[1].extend(target)
    for message, channels in pushes.values():
        await send_to_device_channels_async(channels, message)
    for tenant_id, tenant_events in events.items():
        await _send_events(layer, tenant_id, tenant_events)


outbox = Outbox()
# How often the batched presence changes go to browsers.
PRESENCE_FLUSH_SECONDS = 0.5


def command_status(command: Any) -> None:
    _to_browsers(
        command.tenant_id,
        {
            "kind": "command_status",
            "device": command.device_id,
            "command": command.pk,
            "command_kind": command.kind,
            "status": command.status,
            "error": command.error,
        },
    )


def command_status_after_commit(command: Any) -> None:
    transaction.on_commit(lambda: command_status(command))


def job_update(tenant_id: int, job: Any) -> None:
    _to_browsers(
        tenant_id,
        {
            "kind": "job",
            "device": job.device_id,
            "job": str(job.job_id),
            "status": job.status,
            "percent": round(job.progress_percent, 1),
            "files_done": job.files_done,
            "files_total": job.files_total,
            "bytes_read": job.bytes_read,
            "bytes_uploaded": job.bytes_uploaded,
            "chunks_total": job.chunks_total,
            "chunks_new": job.chunks_new,
            "bytes_new": job.bytes_new,
            "dedup_ratio": job.dedup_ratio,
        },
    )
