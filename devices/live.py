"""Pushes through the channel layer: to a device's live connection, and to admins' browsers.

A push only tells its receiver to look at the database or shows a change already stored, so a push
the layer drops costs a delay, never data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from portal.outbox import outbox

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


async def _send_to_devices(batch: list[tuple[Any, dict[str, Any]]]) -> None:
    """Pushes of one kind to devices of one process go as one message (send_to_device_channels_async)."""
    pushes: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for channels, message in batch:
        key = json.dumps(message, sort_keys=True)
        pushes.setdefault(key, (message, []))[1].extend(channels)
    for message, channels in pushes.values():
        await send_to_device_channels_async(channels, message)


async def _send_to_browsers(batch: list[tuple[Any, dict[str, Any]]]) -> None:
    """A tenant's browser events go as one `live.updates` message, in order."""
    layer = get_channel_layer()
    if layer is None:
        return
    events: dict[int, list[dict[str, Any]]] = {}
    for tenant_id, event in batch:
        events.setdefault(tenant_id, []).append(event)
    for tenant_id, tenant_events in events.items():
        await _send_events(layer, tenant_id, tenant_events)


# How often the batched presence changes go to browsers.
PRESENCE_FLUSH_SECONDS = 0.5


def command_status(command: Any) -> None:
    event = {
        "kind": "command_status",
        "device": command.device_id,
        "command": command.pk,
        "command_kind": command.kind,
        "status": command.status,
        "error": command.error,
    }
    if command.status in INTERIM_STATUSES and interim_statuses.hold(command.tenant_id, command.pk, event):
        return
    interim_statuses.supersede(command.pk)
    _to_browsers(command.tenant_id, event)


# A command's interim statuses wait this long for the next one; one that ends meanwhile is shown
# only ending. Most commands (a ping) end within milliseconds of their delivery: three group sends
# a command from the device's worker, each made while it handled the device's next frame, became
# one. A command that runs longer still shows each step, this much later.
INTERIM_HOLD_SECONDS = 0.1
INTERIM_STATUSES = frozenset({"delivered", "acknowledged", "running"})


class InterimStatuses:
    """The latest interim status of each command, held for INTERIM_HOLD_SECONDS, then handed to the
    outbox by a timer on the loop (armed only while something is held: a loop that wakes for
    nothing costs an idle fleet's workers CPU). Held only while the outbox runs on a live event
    loop (a process with device sockets); otherwise sent at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, tuple[float, int, dict[str, Any]]] = {}
        self._armed = False
        self.loop: asyncio.AbstractEventLoop | None = None

    def hold(self, tenant_id: int, command_pk: int, event: dict[str, Any]) -> bool:
        loop = self.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return False
        with self._lock:
            since = self._held[command_pk][0] if command_pk in self._held else time.monotonic()
            self._held[command_pk] = (since, tenant_id, event)
            arm, self._armed = not self._armed, True
        if arm:
            loop.call_soon_threadsafe(loop.call_later, INTERIM_HOLD_SECONDS, self._release_due)
        return True

    def bind(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Hold for `loop` from now on: what a closed loop held, and its timer, are gone with it."""
        with self._lock:
            self._held, self._armed, self.loop = {}, False, loop

    def supersede(self, command_pk: int) -> None:
        with self._lock:
            self._held.pop(command_pk, None)

    def take_due(self, held_before: float) -> list[tuple[int, dict[str, Any]]]:
        with self._lock:
            due = [pk for pk, (since, _, _) in self._held.items() if since <= held_before]
            return [self._held.pop(pk)[1:] for pk in due]

    def _release_due(self) -> None:
        """On the loop: hand what has waited long enough to the outbox; wait again for the rest."""
        now = time.monotonic()
        for tenant_id, event in self.take_due(now - INTERIM_HOLD_SECONDS):
            _to_browsers(tenant_id, event)
        with self._lock:
            first = min((since for since, _, _ in self._held.values()), default=None)
            self._armed = first is not None
        if first is not None and self.loop is not None:
            self.loop.call_later(max(0.0, first + INTERIM_HOLD_SECONDS - now), self._release_due)


interim_statuses = InterimStatuses()


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


# Pushes to devices first: a command's way to its device is the one someone waits for.
outbox.register(_DEVICES, _send_to_devices, rank=0)
outbox.register(_BROWSERS, _send_to_browsers, rank=1)
outbox.every(PRESENCE_FLUSH_SECONDS, presence_flush)


def _hold_on(loop: asyncio.AbstractEventLoop) -> None:
    presence_batch.loop = loop
    interim_statuses.bind(loop)


outbox.on_bind.append(_hold_on)
