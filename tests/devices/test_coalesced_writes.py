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

from devices import selectors, services
from devices.ingest import IngestBuffer
from devices.models import Device, ProtectedItem, StorageVault
from tenants.audit import SYSTEM
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


def _items_with_row_versions(device_pk: int) -> dict[str, tuple[str, int, int]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT item_id, name, size_bytes, xmin::text::bigint FROM devices_protecteditem WHERE device_id = %s",
            [device_pk],
        )
        return {item_id: (name, size, version) for item_id, name, size, version in cursor.fetchall()}


def test_statuses_are_upserted_together_and_rows_they_leave_as_they_were_are_not_written(
    registration, account, l_key_hex
):
    first = registration.device
    second = register(account, l_key_hex, device_id="device-0002").device
    tenant = first.tenant_id

    def item(item_id, size):
        return {"item_id": item_id, "name": item_id.title(), "engine": "files", "size_bytes": size}

    def vault(used):
        return {"vault_id": "v1", "name": "Office NAS", "kind": "smb", "bytes_used": used, "key_id": "e1"}

    services.inventory_apply_many(
        statuses={
            first.pk: (tenant, {"protected_items": [item("docs", 10), item("mail", 20)], "vaults": [vault(100)]}),
            second.pk: (tenant, {"protected_items": [item("docs", 30)]}),
        }
    )
    before = _items_with_row_versions(first.pk)
    assert {key: value[:2] for key, value in before.items()} == {"docs": ("Docs", 10), "mail": ("Mail", 20)}
    assert _items_with_row_versions(second.pk)["docs"][:2] == ("Docs", 30)
    stored = StorageVault.objects.get(account=account, vault_id="v1")
    assert (stored.kind, stored.bytes_used, stored.key_id, stored.quota_bytes, stored.credentials) == (
        "smb",
        100,
        "e1",
        0,
        "",
    )
    services.vault_credentials_set(actor=SYSTEM, vault=stored, credentials={"access_key": "AK"})
    stored.refresh_from_db()
    unchanged_since = stored.updated_at

    # Both devices of the account report the vault, the same as stored: no write. "docs" is as it
    # was, "mail" grew, "photos" is new; the second device no longer protects anything.
    services.inventory_apply_many(
        statuses={
            first.pk: (
                tenant,
                {"protected_items": [item("docs", 10), item("mail", 25), item("photos", 1)], "vaults": [vault(100)]},
            ),
            second.pk: (tenant, {"protected_items": [], "vaults": [vault(100)]}),
        }
    )
    after = _items_with_row_versions(first.pk)
    assert after["docs"] == before["docs"]  # the same row version: not written again
    assert after["mail"][:2] == ("Mail", 25) and after["mail"][2] != before["mail"][2]
    assert after["photos"][:2] == ("Photos", 1)
    assert _items_with_row_versions(second.pk) == {}
    stored.refresh_from_db()
    assert stored.updated_at == unchanged_since and stored.bytes_used == 100
    assert selectors.vault_credentials(vault=stored) == {"access_key": "AK"}  # an admin's credentials stay

    services.inventory_apply_many(statuses={second.pk: (tenant, {"vaults": [vault(150)]})})
    stored.refresh_from_db()
    assert stored.bytes_used == 150 and stored.updated_at > unchanged_since
    assert StorageVault.objects.filter(account=account).count() == 1
