"""/api/v1/t/<slug>/devices/<pk>/commands/, commands/bulk/ and commands/<pk>/: commands are stored and
answered 202 at once; no request waits for a device."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from devices import services
from devices.models import Command, Device, ProtectedItem, StorageVault
from tenants.audit import SYSTEM
from tenants.models import AuditEvent
from tests.devices.test_api import API, make_account, make_device, make_devices, make_job
from tests.tenants.test_api import VIA, api_client, error_of

BULK = f"{API}/commands/bulk/"


def _commands_url(device: Device) -> str:
    return f"{API}/devices/{device.pk}/commands/"


@pytest.fixture
def device(acme):
    return make_device(make_account(acme, "alice"), name="alice-laptop")


@VIA
def test_it_stores_a_command_and_answers_at_once(acme, device, via):
    client = api_client(acme.technician, acme.tenant, via)

    response = client.post(_commands_url(device), {"kind": "ping"}, "application/json")

    assert response.status_code == 202, response.content
    command = Command.objects.get()
    assert (command.device, command.kind, command.parameters, command.issued_by) == (
        device,
        "ping",
        {},
        acme.technician,
    )
    # Nothing is connected: the command waits, queued, for the device to collect it.
    assert command.status == "queued" and command.delivered_at is None
    assert abs(command.expires_at - command.created_at - timedelta(hours=24)) < timedelta(seconds=1)
    assert response.json() == {
        "id": command.pk,
        "command_id": str(command.command_id),
        "device": device.pk,
        "kind": "ping",
        "parameters": {},
        "status": "queued",
        "issued_by": "acme-technician",
        "created_at": command.created_at.isoformat().replace("+00:00", "Z"),
        "expires_at": command.expires_at.isoformat().replace("+00:00", "Z"),
        "delivered_at": None,
        "acknowledged_at": None,
        "finished_at": None,
        "error": "",
    }
    event = AuditEvent.objects.get(action="command.issued")
    assert (event.actor, event.actor_role, event.target_id) == (acme.technician, "technician", str(command.pk))
    assert event.after["device_pk"] == device.pk


def test_it_does_not_wait_for_a_live_device_to_answer(acme, device):
    """The device is live on a channel that nobody reads: the push is sent, and the request does not wait."""
    Device.objects.filter(pk=device.pk).update(is_live=True, connection_channel="specific.nobody-reads-this")
    client = api_client(acme.owner, acme.tenant, "api_key")

    response = client.post(_commands_url(device), {"kind": "collect_logs", "ttl_seconds": 600}, "application/json")

    assert response.status_code == 202
    command = Command.objects.get()
    assert (response.json()["status"], command.status) == ("queued", "queued")
    assert abs(command.expires_at - command.created_at - timedelta(minutes=10)) < timedelta(seconds=1)
    assert client.get(f"{API}/commands/{command.pk}/").json()["status"] == "queued"


def test_it_checks_each_kinds_parameters(acme, device):
    ProtectedItem.objects.create(tenant=acme.tenant, device=device, item_id="docs", name="Docs", engine="files")
    StorageVault.objects.create(tenant=acme.tenant, account=device.account, vault_id="nas", name="NAS")
    running = make_job(device)
    finished = make_job(device, status="succeeded")
    client = api_client(acme.owner, acme.tenant, "api_key")
    refused = [
        {"kind": "run_backup"},
        {"kind": "run_backup", "parameters": {"protected_item_id": "docs", "vault_id": "elsewhere"}},
        {"kind": "run_backup", "parameters": {"protected_item_id": "other", "vault_id": "nas"}},
        {"kind": "cancel_job", "parameters": {"job_id": str(finished.job_id)}},
        {"kind": "cancel_job", "parameters": {"job_id": str(uuid.uuid4())}},
        {"kind": "cancel_job", "parameters": {"job_id": "not-a-uuid"}},
        {"kind": "browse_files"},
        {"kind": "ping", "parameters": {"path": "/"}},
        {"kind": "ping", "parameters": {"rm": "-rf"}},
        {"kind": "ping", "parameters": ["not", "an", "object"]},
        {"kind": "collect_logs", "parameters": {"lines": 0}},
        {"kind": "reboot"},
        {"kind": "ping", "ttl_seconds": 10},
        {},
    ]
    for body in refused:
        assert error_of(client.post(_commands_url(device), body, "application/json"), 400)["code"] == "invalid", body
    assert not Command.objects.exists()

    accepted = [
        ({"kind": "run_backup", "parameters": {"protected_item_id": "docs", "vault_id": "nas"}}, None),
        (
            {"kind": "cancel_job", "parameters": {"job_id": str(running.job_id).upper()}},
            {"job_id": str(running.job_id)},
        ),
        ({"kind": "update_software", "parameters": {"version": "2.0.1"}}, None),
        ({"kind": "uninstall", "parameters": {"remove_config": True}}, None),
        ({"kind": "collect_logs", "parameters": {"lines": 1000}}, None),
    ]
    for body, stored in accepted:
        response = client.post(_commands_url(device), body, "application/json")
        assert response.status_code == 202, (body, response.content)
        assert Command.objects.get(pk=response.json()["id"]).parameters == (stored or body["parameters"])


def test_it_refuses_what_the_device_does_not_allow_in_the_error_shape(acme, device):
    client = api_client(acme.owner, acme.tenant, "api_key")

    browse = client.post(
        _commands_url(device), {"kind": "browse_files", "parameters": {"path": "/"}}, "application/json"
    )
    assert "does not allow" in str(error_of(browse, 400)["fields"])

    Device.objects.filter(pk=device.pk).update(consents={"allow_browse": True})
    assert client.post(_commands_url(device), {"kind": "browse_files", "parameters": {"path": "/"}}, "application/json")

    services.device_revoke(actor=SYSTEM, device=device)
    revoked = client.post(_commands_url(device), {"kind": "ping"}, "application/json")
    assert "revoked" in str(error_of(revoked, 400)["fields"])
    assert list(Command.objects.values_list("kind", flat=True)) == ["browse_files"]


@VIA
def test_it_lists_a_devices_commands_newest_first(acme, device, via):
    other_device = make_device(device.account, 2)
    first = services.command_issue(actor=SYSTEM, device=device, kind="ping")
    second = services.command_issue(actor=SYSTEM, device=device, kind="refresh_profile")
    services.command_issue(actor=SYSTEM, device=other_device, kind="ping")

    body = api_client(acme.auditor, acme.tenant, via).get(_commands_url(device)).json()

    assert body["count"] == 2
    assert [command["id"] for command in body["results"]] == [second.pk, first.pk]
    assert body["results"][0]["issued_by"] is None
    assert "result" not in body["results"][0]


def test_it_lists_a_devices_commands_in_a_constant_number_of_queries(acme, device, django_assert_max_num_queries):
    client = api_client(acme.auditor, acme.tenant, "api_key")
    services.command_issue(actor=SYSTEM, device=device, kind="ping")
    client.get(_commands_url(device))
    with django_assert_max_num_queries(8) as one:
        client.get(_commands_url(device))
    for issuer in (acme.owner, acme.admin, acme.technician):
        actor = services.Actor(user=issuer, role="owner")
        for _ in range(5):
            services.command_issue(actor=actor, device=device, kind="ping")

    with django_assert_max_num_queries(len(one.captured_queries)):
        assert client.get(_commands_url(device)).json()["count"] == 16


@VIA
def test_it_shows_a_commands_status_and_result(acme, device, via):
    command = services.command_issue(actor=SYSTEM, device=device, kind="collect_logs")
    services.command_advance(device_pk=device.pk, command_id=str(command.command_id), status="acknowledged")
    services.command_advance(
        device_pk=device.pk, command_id=str(command.command_id), status="succeeded", result={"lines": ["a", "b"]}
    )

    response = api_client(acme.auditor, acme.tenant, via).get(f"{API}/commands/{command.pk}/")

    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["result"], body["error"]) == ("succeeded", {"lines": ["a", "b"]}, "")
    assert body["acknowledged_at"] is not None and body["finished_at"] is not None


@VIA
def test_it_sends_one_command_to_many_devices_skipping_those_it_cannot_find(acme, globex, device, via):
    second = make_device(device.account, 2)
    revoked = make_device(device.account, 3, revoked_at=timezone.now())
    globex_device = make_device(make_account(globex, "gina"), 4)
    client = api_client(acme.admin, acme.tenant, via)
    asked = [second.pk, device.pk, device.pk, revoked.pk, globex_device.pk, 10**9]

    response = client.post(
        BULK, {"kind": "update_software", "parameters": {"version": "3.1"}, "device_ids": asked}, "application/json"
    )

    assert response.status_code == 202, response.content
    commands = list(Command.objects.order_by("device_id"))
    assert [(command.device, command.parameters, command.status) for command in commands] == [
        (device, {"version": "3.1"}, "queued"),
        (second, {"version": "3.1"}, "queued"),
    ]
    assert response.json() == {
        "count": 2,
        "skipped": 3,
        "commands": [{"id": command.pk, "device": command.device_id} for command in commands],
    }
    events = AuditEvent.objects.filter(action="command.issued", actor=acme.admin, tenant=acme.tenant)
    assert sorted(event.target_id for event in events) == sorted(str(command.pk) for command in commands)
    assert not Command.objects.filter(device=globex_device).exists()


def test_it_sends_one_command_to_every_active_device_of_an_account(acme, globex, device):
    make_device(device.account, 2)
    make_device(make_account(acme, "bob"), 3)
    client = api_client(acme.owner, acme.tenant, "api_key")

    response = client.post(BULK, {"kind": "ping", "account_id": device.account_id}, "application/json")

    assert (response.status_code, response.json()["count"], response.json()["skipped"]) == (202, 2, 0)
    assert set(Command.objects.values_list("device__account__username", flat=True)) == {"alice"}

    globex_account = make_account(globex, "gina")
    make_device(globex_account, 4)
    response = client.post(BULK, {"kind": "ping", "account_id": globex_account.pk}, "application/json")
    assert set(error_of(response, 400)["fields"]) == {"account_id"}
    assert Command.objects.count() == 2


def test_it_refuses_a_bulk_command_it_cannot_send(acme, device):
    client = api_client(acme.owner, acme.tenant, "api_key")
    refused = [
        ({"kind": "ping"}, {"device_ids"}),
        ({"kind": "ping", "device_ids": [device.pk], "account_id": device.account_id}, {"device_ids"}),
        ({"kind": "ping", "device_ids": []}, {"device_ids"}),
        ({"kind": "ping", "device_ids": [0]}, {"device_ids"}),
        ({"kind": "ping", "device_ids": list(range(1, 10_002))}, {"device_ids"}),
        ({"kind": "uninstall", "device_ids": [device.pk]}, {"kind"}),
        ({"kind": "browse_files", "parameters": {"path": "/"}, "device_ids": [device.pk]}, {"kind"}),
        ({"kind": "collect_logs", "parameters": {"path": "/"}, "device_ids": [device.pk]}, {"parameters"}),
    ]

    for body, fields in refused:
        assert set(error_of(client.post(BULK, body, "application/json"), 400)["fields"]) == fields, body

    assert not Command.objects.exists()


def test_it_takes_up_to_10000_devices_in_one_request(acme, device):
    make_devices(device.account, 9_999, start=10)
    client = api_client(acme.technician, acme.tenant, "api_key")
    device_ids = list(Device.objects.values_list("pk", flat=True))
    assert len(device_ids) == 10_000

    response = client.post(BULK, {"kind": "ping", "device_ids": device_ids}, "application/json")

    assert (response.status_code, response.json()["count"], response.json()["skipped"]) == (202, 10_000, 0)
    assert Command.objects.filter(status="queued").count() == 10_000
    assert AuditEvent.objects.filter(action="command.issued").count() == 10_000
