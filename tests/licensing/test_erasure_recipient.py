"""The licensing service as the GDPR workflow's recipient: the real service, in this process behind a
front on 127.0.0.1 that can be taken down, receives the erasure of an account it was told about."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from django.utils import timezone

from licensing import payload as payload_format
from licensing import services
from licensing.erasure import RECIPIENT_NAME, LicensingNotConfigured, recipient_propagate
from licensing.models import ErasureReceipt, PortalLicence, ReceivedReport, RegisteredPortal, UsageReport
from tenants import services_erasure as erasure
from tenants.audit import Actor
from tenants.models_erasure import ErasureRecipientStatus, ErasureRequest, PrivacySettings
from tenants.personal_data import BACKUP_ACCOUNT, Subject
from tenants.residue import residue_scan
from tests.tenants.erasure_helpers import seed_account

State = ErasureRequest.State
USERNAME = "dana.reported"


def _reported_account(cast):
    """An account without devices (no uninstall to wait for), named in a report the service holds."""
    seeded = seed_account(cast.tenant, cast.owner, username=USERNAME, devices=0)
    services.usage_report_create(period=date(2026, 11, 1))
    assert services.outbox_deliver_pending().state != "not_configured"
    assert _service_mentions(USERNAME)
    # The scanner reads the compressed reports of both sides, so it would see a name left in them.
    hits = {(hit.table, hit.column) for hit in residue_scan(identifiers=[USERNAME]).hits}
    assert {("licensing_usagereport", "body"), ("licensing_receivedreport", "body")} <= hits
    return seeded


def _service_mentions(text: str) -> bool:
    bodies = (payload_format.decompress(bytes(report.body), limit=10**7) for report in ReceivedReport.objects.all())
    return any(text.encode() in body for body in bodies)


def _erase_now(cast, account) -> ErasureRequest:
    """Open and schedule a request with no grace period: it runs at once (tasks run inline)."""
    actor = Actor(user=cast.owner, role="owner", ip_address="203.0.113.7")
    PrivacySettings.objects.update_or_create(tenant=cast.tenant, defaults={"grace_days": 0})
    request = erasure.erasure_request_create(
        actor=actor,
        tenant=cast.tenant,
        subject_kind=BACKUP_ACCOUNT,
        subject_id=account.pk,
        asked_by="The account holder, by e-mail",
        verification="Replied from the address on file",
    )
    erasure.erasure_schedule(actor=actor, request=request)
    request.refresh_from_db()
    return request


@pytest.mark.django_db(transaction=True)
def test_it_stays_partial_while_the_service_is_down_and_completes_with_one_receipt_once_up(
    acme, front, eager, time_machine
):
    time_machine.move_to(timezone.now())
    seeded = _reported_account(acme)
    front.set("refuse")

    request = _erase_now(acme, seeded.account)

    assert request.state == State.PARTIAL, request.last_error
    status = ErasureRecipientStatus.objects.get(request=request)
    assert status.name == RECIPIENT_NAME and status.state == "pending" and status.attempts == 1
    assert "unreachable" in status.last_error and USERNAME not in status.last_error
    assert not ErasureReceipt.objects.exists() and _service_mentions(USERNAME)
    # Not due yet: the sweeper leaves it alone, and the service is not asked.
    erasure.privacy_sweep()
    status.refresh_from_db()
    assert status.attempts == 1

    front.set("up")
    time_machine.move_to(status.next_attempt_at + timedelta(seconds=1))
    erasure.privacy_sweep()

    request.refresh_from_db()
    status.refresh_from_db()
    assert request.state == State.COMPLETED, (request.last_error, request.residue)
    receipt = ErasureReceipt.objects.get()
    assert status.state == "confirmed" and status.attempts == 2
    assert status.receipt["receipt_id"].replace("-", "") == receipt.receipt_id.hex
    assert status.receipt["reference"] == request.tombstone == receipt.reference
    assert not _service_mentions(USERNAME)
    assert residue_scan(identifiers=seeded.identifiers).clean
    # A later sweep asks nothing more: still one receipt.
    requests_so_far = front.requests
    time_machine.shift(timedelta(hours=7))
    erasure.privacy_sweep()
    assert front.requests == requests_so_far and ErasureReceipt.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_it_fails_the_recipient_at_once_and_shows_why_when_the_service_refuses(acme, front, eager):
    seeded = _reported_account(acme)
    # The service no longer knows this portal's key: every signed request is refused (401).
    RegisteredPortal.objects.update(licence_key="not-the-portals-key")

    request = _erase_now(acme, seeded.account)

    assert request.state == State.PARTIAL
    status = ErasureRecipientStatus.objects.get(request=request)
    assert status.state == "failed" and status.attempts == 1 and status.next_attempt_at is None
    assert request.last_error.startswith(f"{RECIPIENT_NAME} refused the erasure") and "401" in request.last_error
    assert USERNAME not in request.last_error and not ErasureReceipt.objects.exists()


def _subject() -> Subject:
    return Subject(kind=BACKUP_ACCOUNT, tenant_id=1, subject_id=1, tombstone="ts_nolicence", username=USERNAME)


@pytest.mark.django_db
def test_it_confirms_that_nothing_was_sent_when_no_licence_was_ever_configured(settings):
    settings.LICENSING_ROLE = "portal"

    receipt = recipient_propagate(_subject(), "ts_nolicence")

    assert receipt["receipt_id"] == "no-licence-ts_nolicence" and receipt["reference"] == "ts_nolicence"
    assert receipt["counts"] == {"reports": 0, "usernames": 0, "device_names": 0}
    assert "holds nothing" in receipt["note"]


@pytest.mark.django_db
def test_it_keeps_retrying_when_reports_exist_but_the_licence_is_gone(acme, settings):
    seed_account(acme.tenant, acme.owner, username=USERNAME, devices=0)
    services.usage_report_create(period=date(2026, 11, 1))
    PortalLicence.objects.all().delete()
    settings.LICENSING_ROLE = "portal"

    with pytest.raises(LicensingNotConfigured):
        recipient_propagate(_subject(), "ts_nolicence")
    assert UsageReport.objects.count() == 1
