"""Erasure propagation: the service's endpoint, and licensing.erasure.erasure_propagate on the portal."""

from __future__ import annotations

import json
from datetime import date, datetime

import pytest
from django.test import Client

from licensing import payload as payload_format
from licensing import selectors, services
from licensing.erasure import ServiceUnreachable, erasure_propagate
from licensing.models import (
    ErasureReceipt,
    ErasureSuppression,
    ReceivedReport,
    RegisteredPortal,
    UsageReport,
)
from licensing.services_receiver import portal_register
from tenants.audit import SYSTEM
from tenants.models import AuditEvent
from tests.licensing.conftest import make_account, make_device, signed_post

REPORTS = "/licensing/v1/reports/"
ERASURES = "/licensing/v1/erasures/"


def _report_json(period: date) -> bytes:
    report, _ = services.usage_report_create(period=period)
    return selectors.usage_report_json(report=report)


def _deliver_directly(licence, data: bytes) -> None:
    response = signed_post(Client(), REPORTS, data, serial=licence.serial, key=licence.licence_key, gzip_body=True)
    assert response.status_code == 201, response.content


def _erase(licence, **body):
    return signed_post(Client(), ERASURES, json.dumps(body).encode(), serial=licence.serial, key=licence.licence_key)


def _stored_json(report: ReceivedReport) -> bytes:
    return payload_format.decompress(bytes(report.body), limit=10**7)


def _everything_the_service_holds() -> bytes:
    """Every licensing service row and the platform audit log, as bytes (bodies decompressed)."""
    parts = [_stored_json(report) for report in ReceivedReport.objects.all()]
    for model in (ReceivedReport, ErasureReceipt, ErasureSuppression, RegisteredPortal):
        for row in model.objects.defer("body").values() if model is ReceivedReport else model.objects.values():
            parts.append(repr(row).encode())
    parts += [repr(row).encode() for row in AuditEvent.objects.values("before", "after", "target_id")]
    return b"\n".join(parts)


@pytest.mark.django_db
def test_it_pseudonymises_a_backup_account_in_every_report_and_answers_with_a_receipt(small_fleet, licence):
    for day in (1, 2, 3):
        _deliver_directly(licence, _report_json(date(2026, 11, day)))

    response = _erase(licence, username="alice", subject_kind="backup_account", reference="gdpr-17")

    assert response.status_code == 200, response.content
    receipt = response.json()
    assert receipt["reference"] == "gdpr-17" and receipt["subject_kind"] == "backup_account"
    assert receipt["pseudonym"] == payload_format.pseudonym_for(serial=licence.serial, reference="gdpr-17")
    # Per report: alice once as an account, twice as the account of her two devices, whose names go too.
    assert receipt["counts"] == {"reports": 3, "usernames": 9, "device_names": 6}
    assert datetime.fromisoformat(receipt["erased_at"])
    assert ErasureReceipt.objects.get().receipt_id.hex == receipt["receipt_id"].replace("-", "")
    held = _everything_the_service_holds()
    assert b"alice" not in held
    assert b"bob" in held and b"carol-server" in held  # the others stay billed
    report = ReceivedReport.objects.order_by("period").first()
    assert report.erased_at is not None and report.devices == 4 and report.devices_with_protected_items == 3
    assert json.loads(_stored_json(report))["tenants"][0]["backup_accounts"] == [receipt["pseudonym"], "bob"]


@pytest.mark.django_db
def test_it_answers_the_same_reference_with_the_same_receipt(small_fleet, licence):
    _deliver_directly(licence, _report_json(date(2026, 11, 1)))
    first = _erase(licence, username="alice", subject_kind="backup_account", reference="gdpr-17").json()

    again = _erase(licence, username="alice", subject_kind="backup_account", reference="gdpr-17").json()

    assert again == first and ErasureReceipt.objects.count() == 1


@pytest.mark.django_db
def test_it_pseudonymises_an_admin_only_where_admins_are_listed(acme, licence):
    # A backup account that happens to share the admin's username is another person.
    namesake = make_account(acme.tenant, "acme-admin")
    make_device(namesake, "namesake-pc", engines=["files"])
    _deliver_directly(licence, _report_json(date(2026, 11, 1)))

    receipt = _erase(licence, username="acme-admin", subject_kind="admin", reference="gdpr-18").json()

    part = json.loads(_stored_json(ReceivedReport.objects.get()))["tenants"][0]
    assert receipt["counts"] == {"reports": 1, "usernames": 1, "device_names": 0}
    assert "acme-admin" not in part["admins"] and receipt["pseudonym"] in part["admins"]
    assert part["backup_accounts"] == ["acme-admin"] and part["devices"][0]["name"] == "namesake-pc"


@pytest.mark.django_db
def test_it_pseudonymises_a_report_that_was_in_flight_during_the_erasure(small_fleet, licence):
    in_flight = _report_json(date(2026, 11, 1))  # built, not yet arrived
    receipt = _erase(licence, username="alice", subject_kind="backup_account", reference="gdpr-19").json()

    _deliver_directly(licence, in_flight)

    stored = ReceivedReport.objects.get()
    assert b"alice" not in _stored_json(stored)
    assert receipt["pseudonym"].encode() in _stored_json(stored) and stored.erased_at is not None
    assert b"alice" not in _everything_the_service_holds()


@pytest.mark.django_db
def test_it_leaves_other_portals_alone(small_fleet, licence):
    other = portal_register(actor=SYSTEM, name="other portal")
    other_report = json.loads(_report_json(date(2026, 11, 1)))
    other_report["portal"]["serial"] = other.portal.serial
    response = signed_post(
        Client(),
        REPORTS,
        json.dumps(other_report).encode(),
        serial=other.portal.serial,
        key=other.licence_key,
        gzip_body=True,
    )
    assert response.status_code == 201

    _erase(licence, username="alice", subject_kind="backup_account", reference="gdpr-20")

    assert b"alice" in _stored_json(ReceivedReport.objects.get(portal=other.portal))


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [
        {"username": "alice", "subject_kind": "tenant", "reference": "r"},
        {"username": "", "subject_kind": "admin", "reference": "r"},
        {"username": "alice", "subject_kind": "admin", "reference": ""},
    ],
)
def test_it_refuses_an_erasure_it_cannot_carry_out(licence, body):
    response = _erase(licence, **body)

    assert response.status_code == 422 and response.json()["error"] == "invalid_erasure"
    assert not ErasureReceipt.objects.exists() and not ErasureSuppression.objects.exists()


@pytest.mark.django_db
def test_it_refuses_an_unsigned_or_replayed_erasure(licence):
    body = json.dumps({"username": "alice", "subject_kind": "admin", "reference": "r"}).encode()
    assert Client().post(ERASURES, data=body, content_type="application/json").status_code == 401
    stale = signed_post(Client(), ERASURES, body, serial=licence.serial, key=licence.licence_key, now=1_000_000_000)
    assert stale.status_code == 401 and stale.json()["error"] == "stale"
    assert not ErasureReceipt.objects.exists()


# --- The portal side: erasure_propagate ------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_propagates_an_erasure_to_unsent_and_sent_reports_and_the_service(small_fleet, licence, service, acme):
    sent, _ = services.usage_report_create(period=date(2026, 11, 1))
    services.outbox_deliver_pending()
    unsent, _ = services.usage_report_create(period=date(2026, 11, 2))

    receipt = erasure_propagate(username="alice", subject_kind="backup_account", reference="42")

    assert {"receipt_id", "reference", "erased_at", "counts", "pseudonym"} <= set(receipt)
    assert receipt["reference"] == "42" and datetime.fromisoformat(receipt["erased_at"])
    assert receipt["counts"]["reports"] == 1  # the service held only the sent one
    assert receipt["portal_counts"] == {"unsent_reports": 1, "sent_reports": 1, "usernames": 6}
    for report in UsageReport.objects.all():
        data = selectors.usage_report_json(report=report)
        assert b"alice" not in data and receipt["pseudonym"].encode() in data
        assert report.rewritten_at is not None and "42" in report.rewritten_note
        # The tenant parts still line up with the rewritten body.
        part = selectors.usage_report_tenant_part(report=report, tenant=acme.tenant)
        assert json.loads(part)["backup_accounts"] == [receipt["pseudonym"], "bob"]
    assert "after sending" in UsageReport.objects.get(pk=sent.pk).rewritten_note
    assert "before sending" in UsageReport.objects.get(pk=unsent.pk).rewritten_note

    # The unsent report goes out without the name.
    services.outbox_deliver_pending()
    assert b"alice" not in _everything_the_service_holds()
    assert ReceivedReport.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_it_raises_when_the_service_is_unreachable_and_succeeds_when_called_again(small_fleet, licence, front, acme):
    services.usage_report_create(period=date(2026, 11, 1))
    front.set("refuse")

    with pytest.raises(ServiceUnreachable):
        erasure_propagate(username="alice", subject_kind="backup_account", reference="43")

    # Nothing waiting to be sent carries the name any more, even before the service answered.
    assert b"alice" not in selectors.usage_report_json(report=UsageReport.objects.get())
    assert not ErasureReceipt.objects.exists()
    front.set("up")
    receipt = erasure_propagate(username="alice", subject_kind="backup_account", reference="43")
    assert receipt["reference"] == "43" and ErasureReceipt.objects.count() == 1
    assert receipt["portal_counts"]["unsent_reports"] == 0  # done the first time
