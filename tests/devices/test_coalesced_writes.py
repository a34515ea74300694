"""The device path's bulk writes when the database gets in their way: a deadlock with another
session's write, or a write the database ends. Nothing a device reported may be lost.

PostgreSQL only: the embedded SQLite has one writer at a time, so it neither deadlocks nor
interleaves writes. The other writer is a second real session of the test database, as another
worker process would hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from datetime import timedelta

import psycopg
import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from devices import services
from devices.ingest import IngestBuffer
from devices.models import Device, ProtectedItem
from tests.devices.conftest import db, register

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrent writers need PostgreSQL"),
]


@contextlib.contextmanager
def other_session(*, autocommit: bool = False):
    params = connection.get_connection_params()
    keep = {key: params[key] for key in ("dbname", "user", "host", "port", "password") if params.get(key)}
    session = psycopg.connect(**keep, autocommit=autocommit)
    try:
        yield session
    finally:
        session.rollback()
        session.close()


def backend_waiting_on_a_lock(watcher: psycopg.Connection, *, but: psycopg.Connection, timeout: float = 10) -> int:
    """The pid of the session that waits on a lock, once it does (not `but`'s own)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = watcher.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> %s",
            [but.info.backend_pid],
        ).fetchone()
        if row:
            return row[0]
        time.sleep(0.01)
    raise AssertionError("no session waited on a lock")


def test_a_heartbeat_flush_that_deadlocks_with_another_write_runs_again(registration, account, l_key_hex, caplog):
    first = registration.device.pk
    second = register(account, l_key_hex, device_id="device-0002").device.pk
    assert first < second  # the flush locks its rows in id order: the first, then the second
    seen_at = timezone.now().replace(microsecond=0)
    outcome: list[BaseException | None] = []

    def flush() -> None:
        try:
            services.devices_touch(seen={second: seen_at, first: seen_at})
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)
        finally:
            connection.close()

    caplog.set_level(logging.INFO, logger="devices.services")
    with other_session() as other, other_session(autocommit=True) as watcher:
        # Only the flush's session looks for the deadlock (after the default second), so it is
        # the one PostgreSQL rolls back; the other one then goes on, as another worker's would.
        other.execute("SET deadlock_timeout = '60s'")
        other.execute("UPDATE devices_device SET name = 'held by another' WHERE id = %s", [second])
        flusher = threading.Thread(target=flush)
        flusher.start()
        backend_waiting_on_a_lock(watcher, but=other)  # the flush holds the first row, waits on the second
        other.execute("UPDATE devices_device SET name = 'held by another' WHERE id = %s", [first])
        other.commit()
        flusher.join(timeout=30)
    assert outcome == [None]
    assert "devices_touch was rolled back (SQLSTATE 40P01); running it again." in caplog.messages
    rows = dict(Device.objects.filter(pk__in=[first, second]).values_list("pk", "last_seen_at"))
    assert rows == {first: seen_at, second: seen_at}
    assert set(Device.objects.filter(pk__in=[first, second]).values_list("name", flat=True)) == {"held by another"}


async def test_a_flush_the_database_ended_is_written_with_the_next_one_and_newer_reports_win(registration):
    device = registration.device
    ingest = IngestBuffer()
    earlier = timezone.now().replace(microsecond=0) - timedelta(minutes=5)
    later = earlier + timedelta(minutes=1)
    status = {"protected_items": [{"item_id": "docs", "name": "Documents", "engine": "files", "size_bytes": 7}]}
    ingest.mark_seen(device.pk, earlier)
    ingest.set_status(device.pk, device.tenant_id, status)
    assert ingest._task is not None
    ingest._task.cancel()  # this test flushes by hand

    with other_session() as other, other_session(autocommit=True) as watcher:
        other.execute("LOCK TABLE devices_device IN ACCESS EXCLUSIVE MODE")
        flush = asyncio.create_task(ingest.flush())
        pid = await asyncio.to_thread(backend_waiting_on_a_lock, watcher, but=other)
        ingest.mark_seen(device.pk, later)  # a heartbeat while the write waits
        watcher.execute("SELECT pg_cancel_backend(%s)", [pid])
        with pytest.raises(OperationalError):
            await flush
    # Kept for the next flush; the heartbeat that came meanwhile is the newer and wins.
    assert ingest.seen == {device.pk: later}
    assert ingest.statuses == {device.pk: (device.tenant_id, status)}

    await ingest.flush()
    assert await db(lambda: Device.objects.get(pk=device.pk).last_seen_at)() == later
    items = await db(
        lambda: list(ProtectedItem.objects.filter(device_id=device.pk).values_list("item_id", "size_bytes"))
    )()
    assert items == [("docs", 7)]
    assert ingest.seen == {} and ingest.statuses == {}
