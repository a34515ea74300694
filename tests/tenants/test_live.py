"""The browser websocket: new audit events reach the tenant's own admins, and nobody else."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.db import transaction
from django.test import override_settings

from portal.asgi import application
from tenants import services
from tenants.audit import Actor
from tests.conftest import client_for

pytestmark = pytest.mark.django_db(transaction=True)


def _headers(user):
    client = client_for(user)
    return [(b"origin", b"http://testserver"), (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())]


async def _connect(slug, user):
    communicator = WebsocketCommunicator(
        application, f"/ws/t/{slug}/live/", headers=await sync_to_async(_headers)(user)
    )
    connected, code = await communicator.connect()
    return communicator, connected, code


@sync_to_async
def _change_settings(cast, name):
    with transaction.atomic():
        services.tenant_update_settings(
            actor=Actor(user=cast.owner, role="owner"),
            tenant=cast.tenant,
            name=name,
            display_name="",
            accent_colour="#1f6feb",
        )


async def _assert_live_stream_is_tenant_scoped(acme, globex):
    acme_owner, connected, _ = await _connect("acme", acme.owner)
    assert connected
    globex_owner, connected, _ = await _connect("globex", globex.owner)
    assert connected

    await _change_settings(acme, "Acme Renamed")

    message = await acme_owner.receive_json_from(timeout=5)
    assert message["type"] == "audit_event"
    assert message["event"]["action"] == "tenant.settings_changed" and message["event"]["actor"] == "acme-owner"
    # Globex's admin hears nothing of acme's event.
    assert await globex_owner.receive_nothing(timeout=0.5)
    await acme_owner.disconnect()
    await globex_owner.disconnect()


async def test_it_streams_audit_events_to_the_tenants_own_admins_only(acme, globex):
    await _assert_live_stream_is_tenant_scoped(acme, globex)


async def test_it_refuses_roles_that_cannot_read_the_audit_log(acme):
    communicator, connected, code = await _connect("acme", acme.technician)
    await communicator.disconnect()
    assert not connected and code == 4403


async def test_it_refuses_another_tenant_with_the_same_code_as_a_missing_one(acme, globex):
    other, connected, code = await _connect("acme", globex.owner)
    missing, connected_missing, code_missing = await _connect("no-such-tenant", globex.owner)
    await other.disconnect()
    await missing.disconnect()
    assert not connected and not connected_missing and code == code_missing == 4404


@pytest.mark.redis
async def test_it_streams_through_the_redis_layer(acme, globex, settings):
    layers = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": settings.REDIS_URL, "socket_timeout": 10}]},
        }
    }
    with override_settings(CHANNEL_LAYERS=layers):
        channel_layers.backends.clear()
        try:
            await _assert_live_stream_is_tenant_scoped(acme, globex)
        finally:
            await asyncio.sleep(0)
            channel_layers.backends.clear()
