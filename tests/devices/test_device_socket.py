"""The device websocket, message by message, through Channels' communicator and the real consumer."""

from __future__ import annotations

import asyncio
import gc
import json
import uuid
import weakref
from datetime import timedelta

import pytest
from django.utils import timezone

from devices import consumers, services
from devices.ingest import buffer
from devices.models import Command, Device, Job, JobLogLine, ProtectedItem, StorageVault
from tenants.audit import Actor
from tests.devices.conftest import db, register

pytestmark = pytest.mark.django_db(transaction=True)


def _device(registration) -> Device:
    return Device.objects.get(pk=registration.device.pk)


async def test_it_accepts_a_device_token_in_the_authorization_header(registration, device_socket):
    socket = device_socket(registration.token)
    connected, _ = await socket.connect()
    assert connected
    welcome = await socket.hello(name="renamed-laptop", timezone="Europe/Berlin", consents={"allow_browse": True})
    assert welcome["heartbeat_interval"] == 30 and welcome["device_id"] == "device-0001"
    device = await db(_device)(registration)
    assert device.is_live and device.name == "renamed-laptop" and device.timezone == "Europe/Berlin"
    assert abs((timezone.now() - device.last_seen_at).total_seconds()) < 30
    assert device.allows_browse and device.connection_channel
    await socket.close()
    device = await db(_device)(registration)
    assert not device.is_live and device.connection_channel == ""


async def test_it_accepts_the_token_as_a_subprotocol(registration, device_socket):
    socket = device_socket(None, subprotocols=["backup-device.v1", f"token.{registration.token}"])
    connected, subprotocol = await socket.connect()
    assert connected and subprotocol == "backup-device.v1"
    await socket.hello()
    await socket.close()


@pytest.mark.parametrize("token", [None, "not-a-token"])
async def test_it_closes_unauthenticated_sockets_with_4001(token, registration, device_socket):
    socket = device_socket(token)
    await socket.connect()
    assert await socket.receive_close_code() == 4001


@pytest.mark.parametrize("suspended", ["account", "tenant"])
async def test_it_refuses_a_device_whose_account_or_tenant_is_suspended(suspended, registration, device_socket):
    def suspend() -> None:
        device = Device.objects.select_related("account", "tenant").get(pk=registration.device.pk)
        if suspended == "account":
            device.account.is_suspended = True
            device.account.save(update_fields=["is_suspended"])
        else:
            device.tenant.status = device.tenant.Status.SUSPENDED
            device.tenant.save(update_fields=["status"])

    await db(suspend)()
    socket = device_socket(registration.token)
    await socket.connect()
    assert await socket.receive_close_code() == 4001
    assert not (await db(_device)(registration)).is_live


async def test_it_closes_the_old_connection_when_the_device_reconnects(registration, device_socket):
    first = device_socket(registration.token)
    await first.connect()
    await first.hello()
    second = device_socket(registration.token)
    await second.connect()
    assert await first.receive_close_code() == 4002
    await first.close()
    await second.hello()
    device = await db(_device)(registration)
    # The replaced connection's goodbye did not mark the device offline.
    assert device.is_live
    await second.close()


async def test_it_closes_a_revoked_devices_connection_at_once(registration, device_socket, acme):
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.hello()
    device = await db(_device)(registration)
    await db(services.device_revoke)(actor=Actor(user=acme.owner, role="owner"), device=device)
    assert await socket.receive_close_code() == 4003
    again = device_socket(registration.token)
    await again.connect()
    assert await again.receive_close_code() == 4001


async def test_it_stores_inventory_from_status_within_a_flush(registration, device_socket):
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.hello()
    await socket.send(
        "status",
        protected_items=[
            {"item_id": "docs", "name": "Documents", "engine": "files", "size_bytes": 1200},
            {"item_id": "db", "name": "Orders DB", "engine": "mysql", "size_bytes": 99},
        ],
        vaults=[{"vault_id": "v1", "name": "Local", "kind": "local", "bytes_used": 4096}],
    )
    await socket.send("heartbeat")
    await socket.processed()
    await buffer.flush()
    items = await db(lambda: sorted(ProtectedItem.objects.values_list("item_id", "engine", "size_bytes")))()
    assert items == [("db", "mysql", 99), ("docs", "files", 1200)]
    vault = await db(lambda: StorageVault.objects.get(vault_id="v1"))()
    assert vault.bytes_used == 4096
    # A later status replaces the items: one that disappeared is removed.
    await socket.send(
        "status",
        protected_items=[{"item_id": "docs", "name": "Documents", "engine": "files", "size_bytes": 1300}],
        vaults=[{"vault_id": "v1", "name": "Local", "kind": "local", "bytes_used": 5000}],
    )
    await socket.processed()
    await buffer.flush()
    items = await db(lambda: list(ProtectedItem.objects.values_list("item_id", "size_bytes")))()
    assert items == [("docs", 1300)]
    await socket.close()


async def test_it_coalesces_heartbeats_into_one_write(registration, device_socket):
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.hello()
    await buffer.flush()
    before = (await db(_device)(registration)).last_seen_at
    for _ in range(10):
        await socket.send("heartbeat")
    await socket.processed()
    # Nothing is written per heartbeat...
    assert (await db(_device)(registration)).last_seen_at == before
    assert registration.device.pk in buffer.seen
    # ...and one flush writes the latest time.
    await buffer.flush()
    assert (await db(_device)(registration)).last_seen_at > before
    await socket.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "malformed_json"),
        ("[1, 2]", "malformed_json"),
        (json.dumps({"v": 2, "type": "heartbeat"}), "unsupported_version"),
        (json.dumps({"v": 1, "type": "launch_missiles"}), "unknown_type"),
        (json.dumps({"v": 1, "type": "status", "protected_items": [{"item_id": "x"}]}), "invalid_message"),
        (json.dumps({"v": 1, "type": "command_ack", "command_id": "nope"}), "invalid_message"),
        (json.dumps({"v": 1, "type": "command_ack", "command_id": str(uuid.uuid4())}), "unknown_command"),
        (json.dumps({"v": 1, "type": "job_progress", "job_id": str(uuid.uuid4()), "percent": 5}), "unknown_job"),
        (json.dumps({"v": 1, "type": "job_progress", "job_id": str(uuid.uuid4()), "percent": 500}), "invalid_message"),
    ],
)
async def test_it_answers_bad_frames_with_an_error_and_stays_open(frame, code, registration, device_socket):
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.hello()
    await socket.send_raw(frame)
    error = await socket.receive()
    assert error["type"] == "error" and error["code"] == code and error["message"]
    await socket.send("heartbeat")
    await socket.hello()  # still answered: the connection is open
    await socket.close()


async def test_it_closes_on_an_oversized_frame(registration, device_socket):
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.send_raw(json.dumps({"v": 1, "type": "heartbeat", "pad": "x" * 70_000}))
    assert await socket.receive_close_code() == 4009


async def test_it_rate_limits_a_flood_then_closes(registration, device_socket):
    socket = device_socket(registration.token)
    await socket.connect()
    for _ in range(300):
        await socket.send("heartbeat")
    codes = []
    while True:
        output = await socket.communicator.receive_output(timeout=3)
        if output["type"] == "websocket.close":
            close_code = output["code"]
            break
        codes.append(json.loads(output["text"])["code"])
    assert "rate_limited" in codes and close_code == 4029


async def test_it_closes_after_too_many_bad_messages(registration, device_socket):
    socket = device_socket(registration.token)
    await socket.connect()
    for _ in range(25):
        await socket.send_raw("garbage")
    assert await socket.receive_close_code() == 4000


async def test_it_closes_a_silent_device(registration, device_socket, settings):
    settings.DEVICE_HEARTBEAT_INTERVAL = 0.2
    socket = device_socket(registration.token)
    await socket.connect()
    assert await socket.receive_close_code(timeout=3) == 4008


# --- Commands -------------------------------------------------------------------------------


def _issue(acme, registration, kind="ping", **kwargs):
    device = Device.objects.get(pk=registration.device.pk)
    return services.command_issue(
        actor=Actor(user=acme.technician, role="technician"), device=device, kind=kind, **kwargs
    )


async def test_it_delivers_queued_commands_after_hello_and_tracks_their_status(acme, registration, device_socket):
    queued = await db(_issue)(acme, registration)
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.hello()
    frame = await socket.receive()
    assert frame["type"] == "command" and frame["command_id"] == str(queued.command_id) and frame["kind"] == "ping"
    command = await db(Command.objects.get)(pk=queued.pk)
    assert command.status == "delivered" and command.delivered_at

    await socket.send("command_ack", command_id=frame["command_id"])
    await socket.send("command_result", command_id=frame["command_id"], status="succeeded", result={"pong": "now"})
    await socket.processed()
    command = await db(Command.objects.get)(pk=queued.pk)
    assert command.status == "succeeded" and command.result == {"pong": "now"} and command.finished_at
    await socket.close()


async def test_it_pushes_a_new_command_to_a_live_device(acme, registration, device_socket):
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.hello()
    command = await db(_issue)(acme, registration, kind="collect_logs", parameters={"lines": 5})
    frame = await socket.receive()
    assert frame["command_id"] == str(command.command_id) and frame["parameters"] == {"lines": 5}
    await socket.close()


async def test_it_resends_unacknowledged_commands_on_reconnect(acme, registration, device_socket):
    command = await db(_issue)(acme, registration)
    first = device_socket(registration.token)
    await first.connect()
    await first.hello()
    assert (await first.receive())["command_id"] == str(command.command_id)
    await first.close()
    second = device_socket(registration.token)
    await second.connect()
    await second.hello()
    # Delivered but never acknowledged: sent again (the device deduplicates by id).
    assert (await second.receive())["command_id"] == str(command.command_id)
    await second.send("command_ack", command_id=str(command.command_id))
    await second.processed()
    await second.close()
    third = device_socket(registration.token)
    await third.connect()
    await third.hello()
    assert await third.communicator.receive_nothing(timeout=0.3)
    await third.close()


async def test_it_never_delivers_an_expired_command(acme, registration, device_socket):
    command = await db(_issue)(acme, registration, ttl=timedelta(seconds=-1))
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.hello()
    assert await socket.communicator.receive_nothing(timeout=0.3)
    assert await db(services.commands_expire)() == 1
    assert (await db(Command.objects.get)(pk=command.pk)).status == "expired"
    await socket.close()


async def test_it_never_moves_a_command_backwards(acme, registration, device_socket):
    command = await db(_issue)(acme, registration)
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.hello()
    await socket.receive()
    await socket.send("command_result", command_id=str(command.command_id), status="failed", error="disk full")
    await socket.send("command_ack", command_id=str(command.command_id))
    await socket.processed()
    stored = await db(Command.objects.get)(pk=command.pk)
    assert stored.status == "failed" and stored.error == "disk full"
    await socket.close()


async def test_it_records_a_job_from_start_to_finish(acme, registration, device_socket):
    command = await db(_issue)(
        acme, registration, kind="run_backup", parameters={"protected_item_id": "docs", "vault_id": "v1"}
    )
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.hello()
    await socket.receive()
    job_id = str(uuid.uuid4())
    await socket.send("command_ack", command_id=str(command.command_id))
    await socket.send(
        "job_started",
        job_id=job_id,
        kind="backup",
        command_id=str(command.command_id),
        protected_item_id="docs",
        vault_id="v1",
        files_total=3,
    )
    await socket.send(
        "job_progress", job_id=job_id, percent=50, files_done=1, files_total=3, bytes_read=10, bytes_uploaded=10
    )
    await socket.processed()
    job = await db(Job.objects.get)(job_id=job_id)
    assert job.status == "running" and job.progress_percent == 50 and job.files_done == 1
    assert (await db(Command.objects.get)(pk=command.pk)).status == "running"
    await socket.send(
        "job_finished",
        job_id=job_id,
        status="failed",
        files_done=2,
        files_total=3,
        bytes_read=20,
        bytes_uploaded=20,
        log_lines=[{"time": "2026-11-27T10:00:00+00:00", "level": "error", "message": "cannot read c.txt"}],
    )
    await socket.processed()
    job = await db(Job.objects.get)(job_id=job_id)
    assert job.status == "failed" and job.files_done == 2 and job.finished_at
    lines = await db(lambda: list(JobLogLine.objects.filter(job=job).values_list("level", "message")))()
    assert lines == [("error", "cannot read c.txt")]
    assert (await db(_device)(registration)).has_failing_jobs
    await socket.close()


def test_it_refuses_to_browse_a_device_that_did_not_allow_it(acme, registration):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        _issue(acme, registration, kind="browse_files", parameters={"path": "/"})
    Device.objects.filter(pk=registration.device.pk).update(consents={"allow_browse": True})
    assert _issue(acme, registration, kind="browse_files", parameters={"path": "/"}).status == "queued"


def test_it_issues_a_bulk_command_with_a_row_and_an_audit_event_per_device(acme, account, l_key_hex):
    from tenants.models import AuditEvent

    for number in range(5):
        from tests.devices.conftest import register

        register(account, l_key_hex, device_id=f"bulk-device-{number}")
    devices = list(Device.objects.filter(account=account))
    commands = services.commands_issue_bulk(
        actor=Actor(user=acme.admin, role="admin"), tenant=acme.tenant, devices=devices, kind="ping"
    )
    assert len(commands) == 5 and {command.device_id for command in commands} == {device.pk for device in devices}
    events = AuditEvent.objects.filter(tenant=acme.tenant, action="command.issued")
    assert sorted(event.after["device_pk"] for event in events) == sorted(device.pk for device in devices)


def test_it_marks_silent_devices_offline(registration):
    Device.objects.filter(pk=registration.device.pk).update(
        is_live=True, last_seen_at=timezone.now() - timedelta(minutes=5), connection_channel="gone"
    )
    assert services.devices_mark_stale_offline(older_than=timedelta(seconds=100)) == 1
    assert not Device.objects.get(pk=registration.device.pk).is_live


def test_it_fails_commands_whose_result_never_came(acme, registration):
    command = _issue(acme, registration)
    Command.objects.filter(pk=command.pk).update(
        status="acknowledged", expires_at=timezone.now() - services.RESULT_GRACE - timedelta(minutes=1)
    )
    fresh = _issue(acme, registration)
    Command.objects.filter(pk=fresh.pk).update(status="running", expires_at=timezone.now() - timedelta(minutes=1))
    assert services.commands_expire() == 1
    assert Command.objects.get(pk=command.pk).status == "failed"
    assert Command.objects.get(pk=fresh.pk).status == "running"


def test_it_marks_ended_connections_offline_unless_a_newer_one_replaced_them(account, l_key_hex):
    devices = [register(account, l_key_hex, device_id=f"device-{number:04}").device for number in (1, 2, 3)]
    for number, device in enumerate(devices, start=1):
        Device.objects.filter(pk=device.pk).update(is_live=True, connection_channel=f"specific.a!p#{number}")
    Device.objects.filter(pk=devices[2].pk).update(connection_channel="specific.a!p#9")  # reconnected since
    ended = [(device.pk, device.tenant_id, f"specific.a!p#{number}") for number, device in enumerate(devices, 1)]
    services.devices_disconnected(connections=ended)
    states = list(Device.objects.order_by("pk").values_list("is_live", "connection_channel"))
    assert states == [(False, ""), (False, ""), (True, "specific.a!p#9")]


async def test_goodbyes_of_connections_that_end_together_are_written_together(
    account, l_key_hex, device_socket, monkeypatch
):
    registrations = [await db(register)(account, l_key_hex, device_id=f"device-{number:04}") for number in range(5)]
    sockets = [device_socket(registration.token) for registration in registrations]
    for socket in sockets:
        await socket.connect()
        await socket.hello()
    writes: list[int] = []
    write = services.devices_disconnected

    def counting_write(*, connections):
        writes.append(len(connections))
        write(connections=connections)

    monkeypatch.setattr(services, "devices_disconnected", counting_write)
    await asyncio.gather(*(socket.close() for socket in sockets))
    assert sum(writes) == 5 and len(writes) < 5  # the first at once, the rest together
    assert await db(lambda: Device.objects.filter(is_live=True).count())() == 0


def test_a_hello_is_stored_and_says_whether_commands_wait_in_one_statement(registration, acme):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    device = _device(registration)
    hello = {"name": "renamed", "os": "Linux", "arch": "", "consents": {"allow_browse": True}}
    with CaptureQueriesContext(connection) as queries:
        waiting = services.device_hello(device_pk=device.pk, hello=hello)
    assert waiting is False
    if connection.vendor == "postgresql":
        assert len(queries.captured_queries) == 1, [query["sql"] for query in queries.captured_queries]
    device.refresh_from_db()
    # An empty field leaves the stored value alone.
    assert (device.name, device.os, device.allows_browse) == ("renamed", "Linux", True)
    assert device.arch == _device(registration).arch

    command = services.command_issue(actor=Actor(user=acme.technician, role="technician"), device=device, kind="ping")
    assert services.device_hello(device_pk=device.pk, hello={}) is True
    assert _device(registration).allows_browse is False  # no consent given in this hello
    Command.objects.filter(pk=command.pk).update(status=Command.Status.DELIVERED)
    assert services.device_hello(device_pk=device.pk, hello={}) is True  # sent, never acknowledged
    Command.objects.filter(pk=command.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert services.device_hello(device_pk=device.pk, hello={}) is False
    Command.objects.filter(pk=command.pk).update(status=Command.Status.SUCCEEDED, expires_at=command.expires_at)
    assert services.device_hello(device_pk=device.pk, hello={}) is False


def test_a_connection_stores_where_and_when_the_device_connected(registration):
    connected = services.device_connect(
        token=registration.token, channel_name="specific.w!x#1", ip_address="203.0.113.5", attempt="run.1"
    )
    assert connected is not None and connected.device_pk == registration.device.pk
    device = _device(registration)
    assert device.is_live and device.connection_channel == "specific.w!x#1" and device.connection_attempt == "run.1"
    assert device.public_ip == "203.0.113.5"
    assert abs((timezone.now() - device.last_seen_at).total_seconds()) < 30


async def test_a_closed_connection_is_freed_by_reference_counting_alone(registration, device_socket):
    """A clean close leaves nothing for the cycle collector, whose full collections walk every
    tracked object: a reference cycle here would make every close of a frozen connection a cycle
    that only an unfreeze and a full collection reclaim (DeviceHub._keep_full_collections_short)."""
    gc.collect()
    gc.disable()
    try:
        socket = device_socket(registration.token)
        assert (await socket.connect())[0]
        await socket.hello()
        await socket.send("heartbeat")
        await socket.processed()
        hub = await consumers._hub()
        (connection,) = [c for c in hub.connections.values() if c.device_pk == registration.device.pk]
        freed = weakref.ref(connection)
        del connection
        await socket.close()
        for _ in range(100):
            if freed() is None:
                break
            await asyncio.sleep(0.02)
        assert freed() is None, [type(referrer).__name__ for referrer in gc.get_referrers(freed())]
    finally:
        gc.enable()


async def _connection_once_frozen(registration, device_socket, monkeypatch):
    """A live device's connection, once the hub has frozen it (after every new connection here)."""
    monkeypatch.setattr(consumers, "FREEZE_AFTER_CONNECTIONS", 1)
    monkeypatch.setattr(consumers, "FREEZE_CHECK_SECONDS", 0.02)
    socket = device_socket(registration.token)
    assert (await socket.connect())[0]
    await socket.hello()
    hub = await consumers._hub()
    (connection,) = [c for c in hub.connections.values() if c.device_pk == registration.device.pk]
    for _ in range(100):
        if not any(tracked is connection for tracked in gc.get_objects()):
            break
        await asyncio.sleep(0.02)
    return socket, connection


async def test_the_hub_moves_settled_connections_out_of_the_cycle_collectors_reach(
    registration, device_socket, monkeypatch
):
    socket, connection = await _connection_once_frozen(registration, device_socket, monkeypatch)
    assert not any(tracked is connection for tracked in gc.get_objects()), "still walked by every collection"
    await socket.close()


async def test_cycles_left_by_frozen_connections_are_collected_once_they_end(registration, device_socket, monkeypatch):
    """A dropped connection leaves reference cycles (its error and frames); frozen, they would
    never be collected: once enough frozen connections end, the hub unfreezes and collects."""
    socket, connection = await _connection_once_frozen(registration, device_socket, monkeypatch)
    connection.left_behind = [connection]  # the cycle a drop leaves, as it were
    freed = weakref.ref(connection)
    del connection
    await socket.close()
    for _ in range(200):
        if freed() is None:
            break
        await asyncio.sleep(0.02)
    assert freed() is None
