"""The hand-written reads and writes of the hot paths (portal/rows.py) give what the ORM gives."""

from __future__ import annotations

import pytest
from django.forms.models import model_to_dict

from devices import selectors, services
from devices.models import Command, Device
from portal import rows
from tenants.audit import SYSTEM
from tenants.models import AuditEvent


@pytest.fixture
def device(registration):
    device = Device.objects.get(pk=registration.device.pk)
    device.consents = {"allow_browse": True, "note": ["ü", 1]}
    device.save(update_fields=["consents"])
    return device


def test_a_device_read_in_one_statement_equals_the_orm_read(acme, device, django_assert_num_queries):
    with django_assert_num_queries(1):
        read = selectors.device_get(tenant=acme.tenant, device_pk=device.pk)
        assert read.account.username == "alice" and read.tenant is acme.tenant
    orm = Device.objects.get(pk=device.pk)
    assert model_to_dict(read) == model_to_dict(orm)
    assert read.consents == {"allow_browse": True, "note": ["ü", 1]} and read.allows_browse
    assert "profile_secrets" in read.account.get_deferred_fields()


def test_a_device_of_another_tenant_or_of_an_account_being_erased_is_not_found(acme, globex, device):
    from django.http import Http404

    for tenant, pk in ((globex.tenant, device.pk), (acme.tenant, "x"), (acme.tenant, device.pk + 1000)):
        with pytest.raises(Http404):
            selectors.device_get(tenant=tenant, device_pk=pk)
    device.account.erasure_pending = True
    device.account.save(update_fields=["erasure_pending"])
    with pytest.raises(Http404):
        selectors.device_get(tenant=acme.tenant, device_pk=device.pk)


def test_an_inserted_row_reads_back_as_the_orm_would_have_written_it(acme, device):
    command = Command(
        tenant=acme.tenant, device=device, kind="ping", parameters={"a": [1, "ü"]}, expires_at=device.registered_at
    )
    rows.insert(command)

    assert command.pk is not None and not command._state.adding
    stored = Command.objects.get(pk=command.pk)
    assert model_to_dict(stored) == model_to_dict(command)
    assert (stored.status, stored.parameters, stored.command_id) == ("queued", {"a": [1, "ü"]}, command.command_id)
    assert stored.created_at is not None


def test_an_audit_event_written_in_one_statement_stays_append_only(acme, device):
    command = services.command_issue(actor=SYSTEM, device=device, kind="ping")
    stored = AuditEvent.objects.filter(action="command.issued", target_id=str(command.pk)).get()
    with pytest.raises(RuntimeError, match="append-only"):
        stored.save()
