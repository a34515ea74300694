"""Command delivery beyond the first push: no re-sends with every push, and a sweep that delivers
commands whose push was lost, and one layer channel per process for all its device connections.
Through Channels' communicator and the real device socket."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from channels.layers import get_channel_layer
from django.utils import timezone

from devices import consumers, live, protocol, services
from devices.models import Command, Device
from tenants.audit import Actor
from tests.devices.conftest import db, register

pytestmark = pytest.mark.django_db(transaction=True)


def _issue(acme, registration, kind: str = "ping") -> Command:
    device = Device.objects.select_related("tenant").get(pk=registration.device.pk)
    return services.command_issue(actor=Actor(user=acme.owner, role="owner"), device=device, kind=kind)


def _queue_without_push(registration) -> Command:
    """Write a command row as command_issue does, but with no push: as if the channel layer lost it."""
    device = Device.objects.get(pk=registration.device.pk)
    return Command.objects.create(
        tenant_id=device.tenant_id,
        device=device,
        kind="ping",
        parameters={},
        expires_at=timezone.now() + timedelta(hours=1),
    )


async def test_it_sends_each_unacknowledged_command_once_per_push(acme, registration, device_socket):
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.hello()
    first = await db(_issue)(acme, registration)
    assert (await socket.receive())["command_id"] == str(first.command_id)
    # A second command's push carries only the new command, not the first one again.
    second = await db(_issue)(acme, registration)
    assert (await socket.receive())["command_id"] == str(second.command_id)
    assert await socket.communicator.receive_nothing(timeout=0.3)
    await socket.close()


def test_it_sends_an_unacknowledged_command_again_once_it_is_overdue(acme, registration):
    command = _issue(acme, registration)
    assert [frame["command_id"] for frame in services.commands_take_for_delivery(device_pk=command.device_id)] == [
        str(command.command_id)
    ]
    assert services.commands_take_for_delivery(device_pk=command.device_id) == []
    Command.objects.filter(pk=command.pk).update(delivered_at=timezone.now() - services.REDELIVER_AFTER * 2)
    frames = services.commands_take_for_delivery(device_pk=command.device_id)
    assert [frame["command_id"] for frame in frames] == [str(command.command_id)]
    # On a reconnect every unacknowledged command goes again, overdue or not.
    Command.objects.filter(pk=command.pk).update(delivered_at=timezone.now())
    frames = services.commands_take_for_delivery(device_pk=command.device_id, reconnected=True)
    assert [frame["command_id"] for frame in frames] == [str(command.command_id)]


async def test_it_delivers_a_command_whose_push_was_lost(registration, device_socket, monkeypatch):
    monkeypatch.setattr(consumers, "UNDELIVERED_SWEEP_SECONDS", 0.2)
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.hello()
    command = await db(_queue_without_push)(registration)
    frame = await socket.receive(timeout=5)
    assert frame["command_id"] == str(command.command_id)
    assert (await db(Command.objects.get)(pk=command.pk)).status == "delivered"
    await socket.close()


async def _connection_name(registration) -> str:
    return (await db(Device.objects.get)(pk=registration.device.pk)).connection_channel


async def test_a_command_s_push_carries_its_frame_and_marks_it_delivered_after_sending(registration, device_socket):
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.hello()
    command = await db(_queue_without_push)(registration)
    push = services.command_push(command)
    await live.send_to_device_channels_async([await _connection_name(registration)], push)
    assert await socket.receive(timeout=5) == push["frames"][0]
    for _ in range(50):
        stored = await db(Command.objects.get)(pk=command.pk)
        if stored.status == "delivered":
            break
        await asyncio.sleep(0.1)
    assert stored.status == "delivered" and stored.delivered_at is not None
    await socket.close()


async def test_a_pushed_frame_goes_out_without_reading_the_database_first(registration, device_socket):
    """The frame comes from the push: a command the database already has past delivery is still
    sent (a delivery read would find nothing), and marking it delivered does not move it back."""
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.hello()
    command = await db(_queue_without_push)(registration)
    push = services.command_push(command)
    await db(Command.objects.filter(pk=command.pk).update)(status=Command.Status.ACKNOWLEDGED)
    await live.send_to_device_channels_async([await _connection_name(registration)], push)
    assert (await socket.receive(timeout=5))["command_id"] == str(command.command_id)
    await asyncio.sleep(0.3)
    assert (await db(Command.objects.get)(pk=command.pk)).status == "acknowledged"
    await socket.close()


async def test_a_push_for_another_device_is_not_sent(acme, registration, device_socket):
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.hello()
    command = await db(_queue_without_push)(registration)
    push = {**services.command_push(command), "device": registration.device.pk + 1000}
    await live.send_to_device_channels_async([await _connection_name(registration)], push)
    assert await socket.communicator.receive_nothing(timeout=0.5)
    assert (await db(Command.objects.get)(pk=command.pk)).status == "queued"
    await socket.close()


def test_marking_sent_commands_moves_each_only_forward(acme, registration):
    queued, acknowledged, answered, swept = (_queue_without_push(registration) for _ in range(4))
    Command.objects.filter(pk=acknowledged.pk).update(status=Command.Status.ACKNOWLEDGED)
    Command.objects.filter(pk=swept.pk).update(status=Command.Status.DELIVERED)
    sent_at = timezone.now()
    acked_at = sent_at + timedelta(milliseconds=5)
    marked = services.commands_mark_delivered(
        sent=[
            services.SentCommand(pk=queued.pk, delivered_at=sent_at),
            services.SentCommand(pk=acknowledged.pk, delivered_at=sent_at),
            services.SentCommand(pk=answered.pk, delivered_at=sent_at, acknowledged_at=acked_at),
            # Sent again by a sweep meanwhile; the device's acknowledgement still moves it on.
            services.SentCommand(pk=swept.pk, delivered_at=sent_at, acknowledged_at=acked_at),
        ]
    )
    assert sorted(command.pk for command in marked) == [queued.pk, answered.pk, swept.pk]
    stored = {command.pk: command for command in Command.objects.filter(pk__in=[c.pk for c in marked])}
    assert (stored[queued.pk].status, stored[queued.pk].delivered_at) == ("delivered", sent_at)
    assert stored[queued.pk].acknowledged_at is None
    for pk in (answered.pk, swept.pk):
        assert (stored[pk].status, stored[pk].delivered_at, stored[pk].acknowledged_at) == (
            "acknowledged",
            sent_at,
            acked_at,
        )
    assert Command.objects.get(pk=acknowledged.pk).status == "acknowledged"
    # Delivered already: a delivery without an acknowledgement does not touch it again.
    assert services.commands_mark_delivered(sent=[services.SentCommand(pk=queued.pk, delivered_at=acked_at)]) == []


def test_a_report_on_a_command_with_no_delivery_stored_dates_its_delivery(acme, registration):
    # The hold ended and its delivery's write was still on its way (or was lost with its worker)
    # when the device's report came: the report proves the frame arrived.
    device_pk = registration.device.pk
    undated, delivered = _queue_without_push(registration), _queue_without_push(registration)
    delivered_at = timezone.now() - timedelta(seconds=5)
    Command.objects.filter(pk=delivered.pk).update(status=Command.Status.DELIVERED, delivered_at=delivered_at)

    for command in (undated, delivered):
        services.command_advance(
            device_pk=device_pk, command_id=str(command.command_id), status="succeeded", result={"pong": 1}
        )

    undated.refresh_from_db()
    assert (undated.status, undated.delivered_at) == ("succeeded", undated.finished_at)
    assert Command.objects.get(pk=delivered.pk).delivered_at == delivered_at
    # The delivery's write arriving afterwards moves nothing back.
    assert (
        services.commands_mark_delivered(sent=[services.SentCommand(pk=undated.pk, delivered_at=timezone.now())]) == []
    )
    assert Command.objects.get(pk=undated.pk).status == "succeeded"


async def _stored(command: Command) -> Command:
    return await db(Command.objects.get)(pk=command.pk)


async def _handled(socket) -> None:
    """Wait until the portal has handled every frame sent so far, without a hello (which would
    take the device's waiting commands): it answers an unknown command's result with an error."""
    await socket.send("command_result", command_id=str(uuid.uuid4()), status="succeeded")
    assert (await socket.receive())["code"] == "unknown_command"


async def _sent_with_hold(acme, registration, device_socket, monkeypatch, hold: float):
    """A connected device, and a command pushed to it while sent commands are held `hold` seconds."""
    monkeypatch.setattr(consumers, "SENT_HOLD_SECONDS", hold)
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.hello()
    command = await db(_issue)(acme, registration)
    return socket, command, await socket.receive()


async def _stored_once_past(command: Command, status: str) -> Command:
    """The command as stored, once it has left `status` (or after five seconds)."""
    for _ in range(50):
        stored = await _stored(command)
        if stored.status != status:
            break
        await asyncio.sleep(0.1)
    return stored


async def test_an_acknowledgement_within_the_hold_is_stored_with_the_result_in_one_write(
    acme, registration, device_socket, monkeypatch
):
    socket, command, frame = await _sent_with_hold(acme, registration, device_socket, monkeypatch, 1.0)
    await socket.send("command_ack", command_id=frame["command_id"])
    await _handled(socket)
    # Held: neither the delivery nor the acknowledgement has been written on its own.
    held = await _stored(command)
    assert (held.status, held.delivered_at, held.acknowledged_at) == ("queued", None, None)
    await socket.send("command_result", command_id=frame["command_id"], status="succeeded", result={"pong": True})
    await _handled(socket)
    stored = await _stored(command)
    assert stored.status == "succeeded"
    assert stored.delivered_at <= stored.acknowledged_at <= stored.finished_at
    await asyncio.sleep(1.2)  # the hold ends: nothing is left to write, nothing moves back
    later = await _stored(command)
    # Model equality compares primary keys only: compare what was stored.
    fields = ("status", "delivered_at", "acknowledged_at", "finished_at")
    assert [getattr(later, name) for name in fields] == [getattr(stored, name) for name in fields]
    await socket.close()


async def test_a_command_without_a_result_within_the_hold_is_stored_acknowledged(
    acme, registration, device_socket, monkeypatch
):
    socket, command, frame = await _sent_with_hold(acme, registration, device_socket, monkeypatch, 0.3)
    await socket.send("command_ack", command_id=frame["command_id"])
    stored = await _stored_once_past(command, "queued")
    assert stored.status == "acknowledged"
    assert stored.delivered_at is not None and stored.acknowledged_at >= stored.delivered_at
    await socket.close()


async def test_a_held_delivery_is_stored_when_the_connection_ends(acme, registration, device_socket, monkeypatch):
    socket, command, _frame = await _sent_with_hold(acme, registration, device_socket, monkeypatch, 60)
    await socket.close()
    assert (await _stored_once_past(command, "queued")).status == "delivered"


def test_it_takes_only_queued_unexpired_commands_of_the_process_older_than_the_sweep(acme, registration):
    Device.objects.filter(pk=registration.device.pk).update(connection_channel="specific.worker-a!abc")
    fresh = _queue_without_push(registration)
    later = timezone.now() + timedelta(seconds=1)

    def take(prefix: str = "specific.worker-a!", before=later):
        return services.commands_take_queued_of_worker(channel_prefix=prefix, queued_before=before)

    assert take(before=fresh.created_at) == {}
    # Another process's devices are not this process's business.
    assert take("specific.worker-b!") == {}
    frames = take()
    assert list(frames) == ["specific.worker-a!abc"]
    assert [frame["command_id"] for frame in frames["specific.worker-a!abc"]] == [str(fresh.command_id)]
    assert Command.objects.get(pk=fresh.pk).status == "delivered"
    assert take() == {}  # taken once
    expired = _queue_without_push(registration)
    Command.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert take() == {}


def test_the_sweep_sends_an_unacknowledged_command_again_once_it_is_overdue(acme, registration):
    """A frame lost on a connection that stayed up (or an acknowledgement lost with a stopped worker)
    goes again within REDELIVER_AFTER plus a sweep, not only at the device's next reconnect."""
    Device.objects.filter(pk=registration.device.pk).update(connection_channel="specific.worker-a!abc")
    command = _queue_without_push(registration)
    later = timezone.now() + timedelta(seconds=1)

    def taken_ids() -> list[str]:
        frames = services.commands_take_queued_of_worker(channel_prefix="specific.worker-a!", queued_before=later)
        return [frame["command_id"] for frame in frames.get("specific.worker-a!abc", [])]

    assert taken_ids() == [str(command.command_id)]
    assert taken_ids() == []  # delivered just now: not yet overdue
    Command.objects.filter(pk=command.pk).update(delivered_at=timezone.now() - services.REDELIVER_AFTER * 2)
    assert taken_ids() == [str(command.command_id)]
    assert taken_ids() == []  # its delivery time was renewed: once per REDELIVER_AFTER, not every sweep
    assert timezone.now() - Command.objects.get(pk=command.pk).delivered_at < services.REDELIVER_AFTER
    # Acknowledged, it is never sent again.
    Command.objects.filter(pk=command.pk).update(
        status=Command.Status.ACKNOWLEDGED, delivered_at=timezone.now() - services.REDELIVER_AFTER * 2
    )
    assert taken_ids() == []


async def test_a_large_bulk_command_reaches_devices_through_the_sweep_alone(
    acme, registration, device_socket, monkeypatch
):
    monkeypatch.setattr(consumers, "UNDELIVERED_SWEEP_SECONDS", 0.2)
    monkeypatch.setattr(services, "BULK_PUSHES_MAX", 0)  # as if the action named thousands of devices
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.hello()

    def issue_bulk() -> list[Command]:
        devices = list(Device.objects.filter(pk=registration.device.pk).select_related("tenant"))
        return services.commands_issue_bulk(
            actor=Actor(user=acme.owner, role="owner"), tenant=acme.tenant, devices=devices, kind="ping"
        )

    [command] = await db(issue_bulk)()
    frame = await socket.receive(timeout=5)
    assert frame["command_id"] == str(command.command_id)
    assert await socket.communicator.receive_nothing(timeout=0.5)  # once, not again by a push
    await socket.close()


async def test_the_sweep_leaves_a_device_with_nothing_waiting_alone(registration, device_socket, monkeypatch):
    monkeypatch.setattr(consumers, "UNDELIVERED_SWEEP_SECONDS", 0.1)
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.hello()
    await asyncio.sleep(0.5)
    assert await socket.communicator.receive_nothing(timeout=0.3)
    await socket.close()


async def test_it_turns_devices_away_while_too_many_handshakes_wait(registration, device_socket, monkeypatch):
    monkeypatch.setattr(consumers, "_handshakes_in_progress", consumers.MAX_HANDSHAKES_IN_PROGRESS)
    busy = device_socket(registration.token)
    await busy.connect()
    close = await busy.receive_close()
    assert close["code"] == 4013
    # The device is told when to come back: a slot of the process's queue, at least a second away.
    retry_after = protocol.retry_after_of(close["reason"])
    assert retry_after is not None and retry_after >= consumers.AdmissionPacer.MIN_DELAY_SECONDS
    assert not (await db(Device.objects.get)(pk=registration.device.pk)).is_live
    monkeypatch.setattr(consumers, "_handshakes_in_progress", 0)
    welcome = device_socket(registration.token)
    await welcome.connect()
    await welcome.hello()
    assert consumers._handshakes_in_progress == 0  # every handshake gave its place back
    await welcome.close()


def test_an_earlier_attempt_served_late_does_not_replace_the_later_connection(registration):
    """In a storm a device gives up on a slow handshake and connects again; the first attempt,
    served last, must not replace the second (the device would be told so and stop)."""
    device = Device.objects.get(pk=registration.device.pk)

    def connect(channel: str, attempt: str) -> services.Connected:
        connected = services.device_connect(
            token=registration.token, channel_name=channel, ip_address=None, attempt=attempt
        )
        assert connected is not None
        return connected

    assert not connect("specific.a!second", "run1.2").superseded
    earlier = connect("specific.a!first", "run1.1")
    assert earlier.superseded and earlier.replaced_channel == ""
    assert Device.objects.get(pk=device.pk).connection_channel == "specific.a!second"
    # A later attempt replaces it, and says which connection it replaced; so does another run
    # (the agent restarted, or a second agent with the same identity) and a client without an id.
    assert connect("specific.a!third", "run1.3").replaced_channel == "specific.a!second"
    assert connect("specific.a!restarted", "run2.1").replaced_channel == "specific.a!third"
    assert connect("specific.a!old-client", "").replaced_channel == "specific.a!restarted"
    assert connect("specific.a!garbled", "run2.x").replaced_channel == "specific.a!old-client"


async def test_a_process_reaches_all_its_device_connections_through_one_channel(
    account, l_key_hex, registration, device_socket
):
    """No channel (and no waiting task) per connection: a connection's name is its process's
    channel and a number, and one layer message on that channel reaches every connection it names."""
    second = await db(register)(account, l_key_hex, device_id="device-0002")
    sockets = [device_socket(registration.token), device_socket(second.token)]
    for socket in sockets:
        await socket.connect()
        await socket.hello()
    names = await db(lambda: list(Device.objects.order_by("pk").values_list("connection_channel", flat=True)))()
    processes = {name.rpartition(live.CONNECTION_SEPARATOR)[0] for name in names}
    assert len(set(names)) == 2 and len(processes) == 1
    [process] = processes
    assert "!" in process  # a process-specific layer channel
    await get_channel_layer().send(process, {"type": "device.revoked", "connections": names})
    assert [await socket.receive_close_code() for socket in sockets] == [4003, 4003]


async def test_pushes_to_many_devices_of_a_process_go_as_one_layer_message(registration, device_socket, monkeypatch):
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.hello()
    name = await db(lambda: Device.objects.get(pk=registration.device.pk).connection_channel)()
    process = name.rpartition(live.CONNECTION_SEPARATOR)[0]
    layer = get_channel_layer()
    sent: list[tuple[str, dict]] = []
    real_send = layer.send

    async def recording_send(channel: str, message: dict) -> None:
        sent.append((channel, message))
        await real_send(channel, message)

    monkeypatch.setattr(layer, "send", recording_send)
    # The live connection and 1,199 of the same process that are gone meanwhile.
    names = [name] + [f"{process}{live.CONNECTION_SEPARATOR}{number}" for number in range(10_000, 11_199)]
    await live.send_to_device_channels_async(names, {"type": "device.revoked"})
    assert [channel for channel, _ in sent] == [process] * 3  # 500 connections a message at most
    assert sorted(len(message["connections"]) for _, message in sent) == [200, 500, 500]
    assert await socket.receive_close_code() == 4003


async def test_the_first_connection_of_a_process_may_replace_one_of_a_process_that_died(registration, device_socket):
    """A worker restarted: the device's row still names a connection of the old process, and the
    new process's very first handshake tells that connection it was replaced."""
    await db(
        lambda: Device.objects.filter(pk=registration.device.pk).update(
            is_live=True, connection_channel="specific.gone!dead#1"
        )
    )()
    socket = device_socket(registration.token)
    connected, _ = await socket.connect()
    assert connected
    await socket.hello()
    name = await db(lambda: Device.objects.get(pk=registration.device.pk).connection_channel)()
    assert name != "specific.gone!dead#1" and live.CONNECTION_SEPARATOR in name


def test_devices_turned_away_are_given_slots_spread_at_the_rate_handshakes_complete():
    pacer = consumers.AdmissionPacer()
    now = 1000.0
    # Nothing measured yet: slots a 1/ASSUMED_RATE apart, from a second away.
    first, second = pacer.retry_after(now), pacer.retry_after(now)
    assert first == pytest.approx(1.0 + 1 / pacer.ASSUMED_RATE)
    assert second - first == pytest.approx(1 / pacer.ASSUMED_RATE)
    # 400 handshakes done in the last two seconds: 200 a second, so slots 5 ms apart.
    for number in range(400):
        pacer.handshake_done(now - 2.0 + number * 0.005)
    third, fourth = pacer.retry_after(now), pacer.retry_after(now)
    assert fourth - third == pytest.approx(1 / 200)
    # 1,000 devices turned away at once come back over the five seconds the process needs for them.
    last = [pacer.retry_after(now) for _ in range(1000)][-1]
    assert last == pytest.approx(fourth + 1000 / 200)
    # Later, with the queue drained, a device is told a second again.
    assert pacer.retry_after(now + 60) == pytest.approx(1.0 + 1 / pacer.ASSUMED_RATE)
