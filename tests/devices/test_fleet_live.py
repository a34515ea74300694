"""Admins' browsers see their own fleet live (presence, commands, jobs), and no other tenant's."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from devices.models import Device
from portal.asgi import application
from tenants.audit import Actor
from tests.conftest import client_for
from tests.devices.conftest import db

pytestmark = pytest.mark.django_db(transaction=True)


def _headers(user):
    client = client_for(user)
    return [(b"origin", b"http://testserver"), (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())]


async def _browser(slug, user):
    communicator = WebsocketCommunicator(
        application, f"/ws/t/{slug}/fleet/", headers=await sync_to_async(_headers)(user)
    )
    connected, code = await communicator.connect()
    assert connected, code
    return communicator


async def test_it_pushes_presence_and_command_status_to_the_tenants_browsers_only(
    acme, globex, registration, device_socket
):
    acme_browser = await _browser("acme", acme.auditor)
    globex_browser = await _browser("globex", globex.owner)
    socket = device_socket(registration.token)
    await socket.connect()
    presence = await acme_browser.receive_json_from(timeout=3)
    assert presence == {"kind": "device_presence", "device": registration.device.pk, "live": True}

    from devices import services

    device = await db(Device.objects.get)(pk=registration.device.pk)
    command = await db(services.command_issue)(
        actor=Actor(user=acme.technician, role="technician"), device=device, kind="ping"
    )
    update = await acme_browser.receive_json_from(timeout=3)
    assert update["kind"] == "command_status" and update["command"] == command.pk and update["status"] == "queued"

    delivered = await acme_browser.receive_json_from(timeout=3)
    assert delivered["command"] == command.pk and delivered["status"] == "delivered"
    await socket.close()
    offline = await acme_browser.receive_json_from(timeout=3)
    assert offline == {"kind": "device_presence", "device": registration.device.pk, "live": False}
    assert await globex_browser.receive_nothing(timeout=0.3)
    await acme_browser.disconnect()
    await globex_browser.disconnect()


async def test_device_connects_and_disconnects_reach_browsers_batched_with_the_latest_state(acme, globex):
    from devices import live

    acme_browser = await _browser("acme", acme.auditor)
    globex_browser = await _browser("globex", globex.owner)
    live.presence_batch.loop = asyncio.get_running_loop()  # as the device consumers' flusher sets it
    try:
        for device_pk, is_live in ((1, True), (2, True), (1, False), (3, True)):
            await sync_to_async(live.device_presence)(acme.tenant.pk, device_pk, is_live=is_live, batched=True)
        assert await acme_browser.receive_nothing(timeout=0.2)  # waiting for the next flush
        await live.presence_flush()
        frames = [await acme_browser.receive_json_from(timeout=3) for _ in range(3)]
        assert sorted((frame["device"], frame["live"]) for frame in frames) == [(1, False), (2, True), (3, True)]
        assert all(frame["kind"] == "device_presence" for frame in frames)
        assert await acme_browser.receive_nothing(timeout=0.2) and await globex_browser.receive_nothing(timeout=0.2)
    finally:
        live.presence_batch.loop = None
    # With no flusher running, a change is sent at once.
    await sync_to_async(live.device_presence)(acme.tenant.pk, 4, is_live=True, batched=True)
    assert (await acme_browser.receive_json_from(timeout=3))["device"] == 4
    await acme_browser.disconnect()
    await globex_browser.disconnect()


async def test_a_process_sends_what_piles_up_together_from_one_task(monkeypatch):
    """The outbox merges: a tenant's browser events into one message, in order, and pushes of one
    kind to devices of one process into one message (one Redis connection serves a process).
    Pushes to devices go first, other group messages (audit events) last, whatever came first."""
    from channels.layers import get_channel_layer

    from devices import live
    from portal.outbox import outbox

    layer = get_channel_layer()
    sent: list[tuple[str, str, dict]] = []

    async def group_send(group, message):
        sent.append(("group", group, message))

    async def send(channel, message):
        sent.append(("send", channel, message))

    monkeypatch.setattr(layer, "group_send", group_send)
    monkeypatch.setattr(layer, "send", send)
    replaced = {"type": "device.replaced"}
    await outbox.send_together(
        [
            ("groups", "tenant.1.audit", {"type": "audit.event"}),
            ("browsers", 1, {"n": 1}),
            ("devices", ("specific.a!x#1",), replaced),
            ("browsers", 2, {"n": 2}),
            ("browsers", 1, {"n": 3}),
            ("devices", ("specific.a!x#2", "specific.b!y#7"), replaced),
        ]
    )
    assert sorted(sent, key=str) == sorted(
        [
            ("send", "specific.a!x", {"type": "device.replaced", "connections": ["specific.a!x#1", "specific.a!x#2"]}),
            ("send", "specific.b!y", {"type": "device.replaced", "connections": ["specific.b!y#7"]}),
            ("group", live.devices_group_name(1), {"type": "live.updates", "events": [{"n": 1}, {"n": 3}]}),
            ("group", live.devices_group_name(2), {"type": "live.updates", "events": [{"n": 2}]}),
            ("group", "tenant.1.audit", {"type": "audit.event"}),
        ],
        key=str,
    )
    order = [kind if kind == "send" else message["type"] for kind, _, message in sent]
    assert order == ["send", "send", "live.updates", "live.updates", "audit.event"]


async def test_services_in_a_process_with_device_sockets_send_through_its_outbox(
    acme, registration, device_socket, monkeypatch
):
    from channels.layers import get_channel_layer

    from devices import services

    browser = await _browser("acme", acme.auditor)
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.hello()
    layer = get_channel_layer()
    kinds: list[str] = []
    group_send = layer.group_send

    async def recording_group_send(group, message):
        kinds.append(message["type"])
        await group_send(group, message)

    monkeypatch.setattr(layer, "group_send", recording_group_send)
    device = await db(Device.objects.select_related("tenant").get)(pk=registration.device.pk)
    command = await db(services.command_issue)(
        actor=Actor(user=acme.technician, role="technician"), device=device, kind="ping"
    )
    statuses = []
    while len(statuses) < 2:
        frame = await browser.receive_json_from(timeout=3)
        if frame.get("kind") == "command_status" and frame["command"] == command.pk:
            statuses.append(frame["status"])
    assert statuses == ["queued", "delivered"]
    # Sent by the outbox (a thread would have sent `live.update` itself and waited for Redis).
    fleet_kinds = [kind for kind in kinds if kind.startswith("live.")]
    assert fleet_kinds and set(fleet_kinds) == {"live.updates"}
    await browser.disconnect()


async def test_a_browser_socket_takes_live_events_without_a_hop_to_the_database_thread(acme, monkeypatch):
    """Channels closes stale database connections in a thread before each message a consumer
    handles; the browser sockets skip that, since they use the database only on connect."""
    import channels.consumer
    from channels.layers import get_channel_layer

    from devices import live

    browser = await _browser("acme", acme.auditor)
    hops = []

    async def counting_close_old_connections():
        hops.append(1)

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counting_close_old_connections)
    layer = get_channel_layer()
    events = [{"kind": "device_presence", "device": number, "live": True} for number in range(3)]
    await layer.group_send(live.devices_group_name(acme.tenant.pk), {"type": "live.updates", "events": events})
    await layer.group_send(live.devices_group_name(acme.tenant.pk), {"type": "live.update", "event": events[0]})
    assert [await browser.receive_json_from(timeout=3) for _ in range(4)] == [*events, events[0]]
    assert hops == []
    await browser.disconnect()


async def test_a_commands_interim_statuses_wait_and_its_end_supersedes_them(monkeypatch):
    """Delivered, acknowledged and running wait INTERIM_HOLD_SECONDS for the next status: a ping
    that ends meanwhile costs browsers one push from the device's worker, not three."""
    from types import SimpleNamespace

    from devices import live

    sent = []
    monkeypatch.setattr(live, "_to_browsers", lambda tenant_id, event: sent.append(event["status"]))
    ping = SimpleNamespace(tenant_id=1, device_id=2, pk=3, kind="ping", status="delivered", error="")
    backup = SimpleNamespace(tenant_id=1, device_id=2, pk=4, kind="run_backup", status="delivered", error="")
    live.interim_statuses.bind(asyncio.get_running_loop())  # as the device sockets' outbox does
    try:
        for command, status in ((ping, "delivered"), (backup, "delivered"), (ping, "acknowledged")):
            command.status = status
            await sync_to_async(live.command_status)(command)  # from a thread, as services run
        backup.status = "running"
        await sync_to_async(live.command_status)(backup)
        await asyncio.sleep(live.INTERIM_HOLD_SECONDS / 2)
        assert sent == []  # all held
        ping.status = "succeeded"
        live.command_status(ping)
        assert sent == ["succeeded"]
        await asyncio.sleep(live.INTERIM_HOLD_SECONDS)
        assert sent == ["succeeded", "running"]  # the backup's latest; the ping's were superseded
        await asyncio.sleep(live.INTERIM_HOLD_SECONDS * 2)
        assert sent == ["succeeded", "running"]  # and nothing more: the timer is not armed again
    finally:
        live.interim_statuses.bind(None)
    live.command_status(SimpleNamespace(tenant_id=1, device_id=2, pk=5, kind="ping", status="delivered", error=""))
    assert sent == ["succeeded", "running", "delivered"]  # no outbox running: sent at once
