"""The privacy pages: the request list (due dates, overdue, CSV), acting on a request, the receipt,
and exports (built in the background, downloadable once by the admin who asked, then deleted)."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import timedelta

import pytest
from django.utils import timezone

from devices.models import BackupAccount
from tenants import services_erasure, services_export
from tenants.audit import Actor
from tenants.models import AuditEvent
from tenants.models_erasure import DataExport, ErasureRequest
from tests.tenants.erasure_helpers import seed_account
from tests.tenants.test_erasure import open_request, owner_actor, run_to_completion


@pytest.mark.django_db
def test_it_lists_requests_with_due_dates_and_highlights_overdue_ones_in_constant_queries(
    acme, as_user, time_machine, django_assert_max_num_queries
):
    time_machine.move_to("2026-03-01T09:00:00Z")
    first = seed_account(acme.tenant, acme.owner, username="late.one", devices=0)
    old = open_request(acme, first.account)
    time_machine.move_to("2026-05-01T09:00:00Z")
    for number in range(5):
        account = seed_account(acme.tenant, acme.owner, username=f"fresh.{number}", devices=0).account
        open_request(acme, account)
    client = as_user(acme.auditor)
    with django_assert_max_num_queries(12):
        response = client.get("/t/acme/privacy/")
    body = response.content.decode()
    assert response.status_code == 200
    assert body.count('data-testid="overdue"') == 1 and old.tombstone in body
    assert body.count('class="overdue"') == 1
    for number in range(20):
        account = seed_account(acme.tenant, acme.owner, username=f"more.{number}", devices=0).account
        open_request(acme, account)
    with django_assert_max_num_queries(12):
        assert client.get("/t/acme/privacy/").status_code == 200
    csv_body = b"".join(client.get("/t/acme/privacy/requests.csv").streaming_content).decode()
    lines = csv_body.strip().splitlines()
    assert lines[0].startswith("id,tombstone,subject_kind,state,received_at,due_at,overdue")
    assert len(lines) == 27 and sum(line.endswith(",yes,") for line in lines) == 1
    assert "late.one" not in csv_body  # the CSV names requests by tombstone only


@pytest.mark.django_db
def test_it_lets_owners_and_admins_act_and_auditors_only_read(acme, globex, as_user):
    account = seed_account(acme.tenant, acme.owner, username="carol.page", devices=0).account
    response = as_user(acme.admin).post(
        "/t/acme/privacy/erasures/new/",
        {"kind": "backup_account", "subject": account.pk, "asked_by": "Carol, by phone", "verification": "Call-back"},
    )
    erasure = ErasureRequest.objects.get(subject_id=account.pk)
    assert response.status_code == 302 and erasure.requested_by == acme.admin and erasure.state == "received"
    auditor = as_user(acme.auditor)
    assert auditor.get(f"/t/acme/privacy/erasures/{erasure.pk}/").status_code == 200
    for action in ("schedule", "cancel"):
        assert auditor.post(f"/t/acme/privacy/erasures/{erasure.pk}/act/", {"action": action}).status_code == 403
    assert auditor.post("/t/acme/privacy/erasures/new/", {"kind": "backup_account"}).status_code == 403
    assert as_user(acme.technician).get("/t/acme/privacy/").status_code == 403
    assert as_user(globex.owner).get(f"/t/acme/privacy/erasures/{erasure.pk}/").status_code == 404
    erasure.refresh_from_db()
    assert erasure.state == "received"
    as_user(acme.owner).post(f"/t/acme/privacy/erasures/{erasure.pk}/act/", {"action": "schedule"})
    erasure.refresh_from_db()
    assert erasure.state == "scheduled" and BackupAccount.objects.get(pk=account.pk).erasure_pending
    # The account is no longer shown while it waits for erasure.
    assert as_user(acme.owner).get(f"/t/acme/accounts/{account.pk}/").status_code == 404
    assert "carol.page" not in as_user(acme.owner).get("/t/acme/accounts/").content.decode()
    as_user(acme.owner).post(f"/t/acme/privacy/erasures/{erasure.pk}/act/", {"action": "refuse", "reason": ""})
    erasure.refresh_from_db()
    assert erasure.state == "scheduled"  # a refusal without a reason is refused
    as_user(acme.owner).post(f"/t/acme/privacy/erasures/{erasure.pk}/act/", {"action": "cancel"})
    erasure.refresh_from_db()
    assert (
        erasure.state == "cancelled" and as_user(acme.owner).get(f"/t/acme/accounts/{account.pk}/").status_code == 200
    )


@pytest.mark.django_db
def test_it_prints_a_receipt_that_contains_no_erased_data(
    acme, as_user, eager, licensing, time_machine, django_capture_on_commit_callbacks
):
    seeded = seed_account(acme.tenant, acme.owner, username="dave.receipt", devices=2)
    erasure = open_request(acme, seeded.account)
    services_erasure.erasure_schedule(actor=owner_actor(acme), request=erasure)
    erasure = run_to_completion(erasure, time_machine, django_capture_on_commit_callbacks)
    assert erasure.state == "completed"
    body = as_user(acme.auditor).get(f"/t/acme/privacy/erasures/{erasure.pk}/receipt/").content.decode()
    assert erasure.tombstone in body and "licensing-test" in body and "lic-1" in body
    assert "jobs: 2" in body and "devices: 2" in body and "@media print" in body
    assert "Legal basis" in body and "Art. 17(3)(e)" in body and "nothing found" in body
    for identifier in seeded.identifiers:
        assert identifier.lower() not in body.lower(), identifier
    detail = as_user(acme.owner).get(f"/t/acme/privacy/erasures/{erasure.pk}/").content.decode()
    for identifier in seeded.identifiers:
        assert identifier.lower() not in detail.lower(), identifier


@pytest.mark.django_db
def test_it_builds_an_export_in_the_background_and_hands_it_over_once(
    acme, as_user, eager, time_machine, django_capture_on_commit_callbacks
):
    seeded = seed_account(acme.tenant, acme.owner, username="erin.export", devices=2)
    with django_capture_on_commit_callbacks(execute=True):
        response = as_user(acme.admin).post(
            "/t/acme/privacy/exports/new/", {"kind": "backup_account", "subject": seeded.account.pk}
        )
    assert response.status_code == 302
    export = DataExport.objects.get(subject_id=seeded.account.pk)
    assert export.state == "ready" and export.size_bytes > 0
    # Only the admin who asked may download it.
    assert as_user(acme.owner).post(f"/t/acme/privacy/exports/{export.pk}/download/").status_code == 302
    assert as_user(acme.auditor).post(f"/t/acme/privacy/exports/{export.pk}/download/").status_code == 403
    export.refresh_from_db()
    assert export.state == "ready"
    response = as_user(acme.admin).post(f"/t/acme/privacy/exports/{export.pk}/download/")
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    names = set(archive.namelist())
    assert {"manifest.json", "devices-account.json", "devices-devices.json", "devices-devices.csv"} <= names
    assert {"devices-jobs.csv", "devices-commands.json", "devices-vaults.csv", "devices-protected_items.csv"} <= names
    devices = json.loads(archive.read("devices-devices.json"))
    assert sorted(device["name"] for device in devices) == ["erin.export laptop 0", "erin.export laptop 1"]
    assert json.loads(archive.read("devices-account.json"))[0]["email"] == "erin.export@mail.example"
    assert archive.read("devices-jobs.csv").decode().count("\n") == 3  # header and two jobs
    # Downloaded once: the bytes are gone and a second download is refused.
    export.refresh_from_db()
    assert export.state == "downloaded" and bytes(export.archive) == b""
    again = as_user(acme.admin).post(f"/t/acme/privacy/exports/{export.pk}/download/")
    assert again.status_code == 302
    assert AuditEvent.objects.filter(action="export.downloaded", target_id=str(export.pk)).count() == 1
    # An export nobody collects is deleted when its link expires.
    late = services_export.export_request(
        actor=Actor(user=acme.admin, role="admin"),
        tenant=acme.tenant,
        subject_kind="backup_account",
        subject_id=seeded.account.pk,
    )
    services_export.export_build(export_id=late.pk)
    time_machine.move_to(timezone.now() + timedelta(hours=25))
    services_erasure.privacy_sweep()
    late.refresh_from_db()
    assert late.state == "expired" and bytes(late.archive) == b""
    # A subject held for erasure is no longer exported.
    erasure = open_request(acme, seeded.account)
    services_erasure.erasure_schedule(actor=owner_actor(acme), request=erasure)
    with pytest.raises(Exception, match="no longer exported"):
        services_export.export_request(
            actor=Actor(user=acme.admin, role="admin"),
            tenant=acme.tenant,
            subject_kind="backup_account",
            subject_id=seeded.account.pk,
        )
