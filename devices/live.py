"""Pushes through the channel layer: to a device's live connection, and to admins' browsers.

A push only tells its receiver to look at the database or shows a change already stored, so a push
the layer drops costs a delay, never data.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)
PUSHES_IN_FLIGHT = 50


def devices_group_name(tenant_id: int) -> str:
    """The group of a tenant's browsers that watch devices (one group per tenant, not per device)."""
    return f"tenant.{tenant_id}.devices"


def send_to_device_channel(channel: str, message: dict[str, Any]) -> None:
    send_to_device_channels([channel], message)


def send_to_device_channels(channels: list[str], message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None or not channels:
        return

    # At most this many sends in flight: a bulk command to 10,000 devices sent all at once ran
    # the layer out of Redis connections (MaxConnectionsError) for 99 % of them.
    in_flight = asyncio.Semaphore(PUSHES_IN_FLIGHT)

    async def send_one(channel: str) -> None:
        async with in_flight:
            await layer.send(channel, message)

    async def send_all() -> list[Any]:
        return await asyncio.gather(*(send_one(channel) for channel in channels), return_exceptions=True)

    failures = [result for result in async_to_sync(send_all)() if isinstance(result, BaseException)]
    if failures:
        # The worker's sweep delivers the commands within seconds, and a device collects them anyway
        # when it (re)connects.
        logger.warning("%d of %d pushes to devices failed: %r", len(failures), len(channels), failures[0])


def _to_browsers(tenant_id: int, event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(devices_group_name(tenant_id), {"type": "live.update", "event": event})
    except Exception as error:  # the layer is down: browsers resynchronise when their socket reconnects
        logger.warning("A live update to tenant %s's browsers was dropped: %s", tenant_id, error)


def device_presence(tenant_id: int, device_pk: int, *, is_live: bool) -> None:
    _to_browsers(tenant_id, {"kind": "device_presence", "device": device_pk, "live": is_live})


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
