"""Coalesced writes for the device hot path, one buffer per server process.

Heartbeats only move a device's last-seen time, and status reports replace its inventory; writing
each as it arrives would cost a database round trip per message. Instead the latest value per
device is kept here and written every FLUSH_INTERVAL seconds in a few statements, so the database
load grows with the number of devices that changed, not with the message rate. A status whose
inventory is the same as the one this process last wrote for the device costs no write at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import datetime
from typing import Any

from channels.db import database_sync_to_async

from devices import services

FLUSH_INTERVAL = 2.0
logger = logging.getLogger(__name__)


class IngestBuffer:
    def __init__(self) -> None:
        self.seen: dict[int, datetime] = {}
        self.statuses: dict[int, tuple[int, dict[str, Any]]] = {}
        # Per device, a digest of the inventory this process last wrote: devices repeat their status
        # every few seconds, and most reports change nothing.
        self.written: dict[int, bytes] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()

    def mark_seen(self, device_pk: int, at: datetime) -> None:
        self.seen[device_pk] = at
        self._ensure_flusher()

    def set_status(self, device_pk: int, tenant_id: int, status: dict[str, Any]) -> None:
        self.statuses[device_pk] = (tenant_id, status)
        self._ensure_flusher()

    def forget(self, device_pk: int) -> None:
        """Drop what is known of a device (it disconnected), so its next status is written again."""
        self.written.pop(device_pk, None)

    def _ensure_flusher(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A new event loop (a restarted server, or the next test): the old task died with its loop.
            self._loop, self._task, self._lock = loop, None, asyncio.Lock()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                await self.flush()
            except Exception:  # what it held is written with the next flush
                logger.exception("Flushing device heartbeats and status failed")

    async def flush(self) -> None:
        """Write what has been buffered; safe to call at any time (tests and shutdown do)."""
        async with self._lock:
            seen, self.seen = self.seen, {}
            statuses, self.statuses = self.statuses, {}
            changed: dict[int, tuple[int, dict[str, Any]]] = {}
            digests: dict[int, bytes] = {}
            for device_pk, (tenant_id, status) in statuses.items():
                digest = _inventory_digest(status)
                if self.written.get(device_pk) != digest:
                    changed[device_pk] = (tenant_id, status)
                    digests[device_pk] = digest
            if seen or changed:
                try:
                    await database_sync_to_async(_write)(seen, changed)
                except Exception:
                    self._keep_for_next_flush(seen, changed)
                    raise
            self.written.update(digests)

    def _keep_for_next_flush(self, seen: dict[int, datetime], statuses: dict[int, tuple[int, dict[str, Any]]]) -> None:
        """Put back what a failed write held (the database was away, or ended the write); what came
        in meanwhile is newer and wins. The buffer holds one entry a device, so it stays bounded
        however long the database is away."""
        self.seen = {**seen, **self.seen}
        self.statuses = {**statuses, **self.statuses}


def _inventory_digest(status: dict[str, Any]) -> bytes:
    inventory = [status.get("protected_items"), status.get("vaults")]
    return hashlib.blake2b(json.dumps(inventory, sort_keys=True).encode(), digest_size=16).digest()


def _write(seen: dict[int, datetime], statuses: dict[int, tuple[int, dict[str, Any]]]) -> None:
    services.devices_touch(seen=seen)
    services.inventory_apply_many(statuses=statuses)


buffer = IngestBuffer()
