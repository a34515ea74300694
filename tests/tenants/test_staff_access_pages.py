"""Staff access pages: the tenant's Staff access page, consent log and policy; the platform side."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest

from tenants import services_access
from tenants.audit import Actor
from tenants.models import AuditEvent
from tenants.models_access import AccessPolicy, AccessRequest
from tests.conftest import make_user

pytestmark = pytest.mark.django_db
State = AccessRequest.State


def _request(staff, cast, **overrides) -> AccessRequest:
    arguments = {
        "reason_code": "incident",
        "ticket_reference": "INC-1",
        "justification": "Restore keeps failing.",
        "areas": ["devices", "accounts"],
        "scope_write": True,
    } | overrides
    return services_access.access_request_create(
        actor=Actor(user=staff, role="platform_staff"), tenant=cast.tenant, **arguments
    )


def test_it_lets_staff_request_access_from_the_platform_pages(acme, staff, as_user):
    client = as_user(staff)
    assert f"/platform/access/?tenant={acme.tenant.pk}" in client.get("/platform/").content.decode()
    assert (
        "Request access to Acme Corporation"
        in client.get(f"/platform/access/?tenant={acme.tenant.pk}").content.decode()
    )
    response = client.post(
        "/platform/access/",
        {
            "tenant": acme.tenant.pk,
            "reason_code": "customer_support",
            "ticket_reference": "SUP-1",
            "justification": "Look at failing jobs.",
            "areas": ["devices", "jobs"],
            "duration_minutes": "120",
        },
    )
    assert response.status_code == 302
    created = AccessRequest.objects.get()
    assert (created.requester, created.tenant, created.scope_write) == (staff, acme.tenant, False)
    assert created.requested_duration == timedelta(hours=2)
    page = client.get("/platform/access/").content.decode()
    assert f'data-testid="my-state-{created.pk}">Requested' in page


def test_it_shows_approvers_a_badge_and_the_pending_request(acme, staff, as_user):
    created = _request(staff, acme)
    page = as_user(acme.admin).get("/t/acme/").content.decode()
    assert 'data-testid="staff-access-badge">1<' in page
    page = as_user(acme.owner).get("/t/acme/staff-access/").content.decode()
    assert "Restore keeps failing." in page and f'data-testid="approve-{created.pk}"' in page
    # Auditors read the page, without the buttons; technicians do not see it at all.
    page = as_user(acme.auditor).get("/t/acme/staff-access/").content.decode()
    assert "Restore keeps failing." in page and "approve-" not in page
    assert as_user(acme.technician).get("/t/acme/staff-access/").status_code == 403


def test_it_approves_narrowed_from_the_page(acme, staff, as_user):
    created = _request(staff, acme)
    prefix = f"r{created.pk}-"
    response = as_user(acme.owner).post(
        f"/t/acme/staff-access/{created.pk}/approve/",
        {prefix + "duration_minutes": "60", prefix + "areas": ["devices"], prefix + "read_only": "on"},
    )
    assert response.status_code == 302
    created.refresh_from_db()
    assert created.state == State.APPROVED
    assert (created.granted_areas, created.granted_write, created.granted_duration) == (
        ["devices"],
        False,
        timedelta(hours=1),
    )


def test_it_denies_and_revokes_from_the_page(acme, staff, as_user):
    denied, granted = _request(staff, acme), _request(staff, acme)
    owner = as_user(acme.owner)
    owner.post(f"/t/acme/staff-access/{denied.pk}/deny/", {"note": "Use the ticket."})
    owner.post(f"/t/acme/staff-access/{granted.pk}/approve/", {})
    assert as_user(staff).get("/t/acme/devices/").status_code == 200
    owner.post(f"/t/acme/staff-access/{granted.pk}/revoke/")
    assert AccessRequest.objects.get(pk=denied.pk).state == State.DENIED
    assert AccessRequest.objects.get(pk=granted.pk).state == State.REVOKED
    assert as_user(staff).get("/t/acme/devices/").status_code == 404


def test_it_refuses_deciding_to_auditors_and_other_tenants(acme, globex, staff, as_user):
    created = _request(staff, acme)
    assert as_user(acme.auditor).post(f"/t/acme/staff-access/{created.pk}/approve/").status_code == 403
    assert as_user(globex.owner).post(f"/t/acme/staff-access/{created.pk}/approve/").status_code == 404
    assert as_user(globex.owner).post(f"/t/globex/staff-access/{created.pk}/approve/").status_code == 404
    assert AccessRequest.objects.get(pk=created.pk).state == State.REQUESTED


def test_it_shows_the_banner_and_hides_staff_access_from_staff(acme, staff, as_user):
    created = _request(staff, acme)
    services_access.access_request_approve(actor=Actor(user=acme.owner, role="owner"), access_request=created)
    client = as_user(staff)
    page = client.get("/t/acme/devices/").content.decode()
    assert 'data-testid="staff-banner"' in page and f"grant #{created.pk}" in page and "read-write" in page
    assert "BREAK-GLASS" not in page
    # Staff never see or answer the tenant's own staff access controls.
    assert client.get("/t/acme/staff-access/").status_code == 403
    assert client.get("/t/acme/staff-access/log/").status_code == 403
    assert client.post(f"/t/acme/staff-access/{created.pk}/revoke/").status_code == 403
    assert 'data-testid="staff-banner"' not in as_user(acme.owner).get("/t/acme/").content.decode()


def test_it_filters_and_exports_the_consent_log(acme, staff, as_user):
    first, second = _request(staff, acme), _request(staff, acme, areas=["team"], scope_write=False)
    services_access.access_request_approve(actor=Actor(user=acme.owner, role="owner"), access_request=second)
    as_user(staff).get("/t/acme/team/")
    owner = as_user(acme.auditor)
    page = owner.get(f"/t/acme/staff-access/log/?grant={second.pk}").content.decode()
    assert "staff_access.used" in page and "/t/acme/team/" in page
    rows = list(
        csv.DictReader(
            io.StringIO(b"".join(owner.get("/t/acme/staff-access/log/export.csv").streaming_content).decode())
        )
    )
    assert [row["action"] for row in rows] == [
        "staff_access.used",
        "staff_access.approved",
        "staff_access.requested",
        "staff_access.requested",
    ]
    assert rows[0]["grant_id"] == str(second.pk) and rows[0]["path"] == "/t/acme/team/"
    exported = json.loads(owner.get(f"/t/acme/staff-access/log/export.json?grant={first.pk}").content)
    assert [event["action"] for event in exported["events"]] == ["staff_access.requested"]
    assert owner.get("/t/acme/staff-access/log/?since=2000-01-01&until=2000-01-02").context["events"].count() == 0


def test_it_lets_only_owners_change_the_policy(acme, as_user):
    data = {"default_minutes": "60", "max_minutes": "120", "approvers": "owners", "allow_break_glass": "on"}
    assert as_user(acme.admin).post("/t/acme/staff-access/policy/", data).status_code == 403
    assert as_user(acme.owner).post("/t/acme/staff-access/policy/", data).status_code == 302
    policy = AccessPolicy.objects.get(tenant=acme.tenant)
    assert (policy.default_duration, policy.max_duration, policy.approvers, policy.allow_break_glass) == (
        timedelta(hours=1),
        timedelta(hours=2),
        "owners",
        True,
    )
    event = AuditEvent.objects.get(tenant=acme.tenant, action="staff_access.policy_changed")
    assert event.before["max_minutes"] == 480 and event.after["max_minutes"] == 120
    bad = dict(data, default_minutes="240")
    response = as_user(acme.owner).post("/t/acme/staff-access/policy/", bad)
    assert response.status_code == 200 and "must not exceed" in response.content.decode()


def test_it_runs_break_glass_through_two_staff_members(acme, staff, as_user):
    AccessPolicy.objects.create(tenant=acme.tenant, allow_break_glass=True)
    client = as_user(staff)
    client.post(
        "/platform/break-glass/",
        {"tenant": acme.tenant.pk, "incident_id": "INC-9", "justification": "Outage.", "areas": ["devices"]},
    )
    created = AccessRequest.objects.get()
    assert created.break_glass and created.incident_id == "INC-9"
    assert f"break-glass-{created.pk}" not in client.get("/platform/break-glass/").content.decode()
    client.post(f"/platform/break-glass/{created.pk}/approve/")
    assert AccessRequest.objects.get(pk=created.pk).state == State.REQUESTED
    second = as_user(make_user("second-staff", is_staff=True))
    assert f"break-glass-{created.pk}" in second.get("/platform/break-glass/").content.decode()
    second.post(f"/platform/break-glass/{created.pk}/approve/")
    assert AccessRequest.objects.get(pk=created.pk).state == State.APPROVED
    assert "BREAK-GLASS" in client.get("/t/acme/devices/").content.decode()
    assert "BREAK-GLASS" in as_user(acme.owner).get("/t/acme/staff-access/").content.decode()


def test_it_lets_staff_cancel_and_complete_only_their_own(acme, staff, as_user):
    pending, live = _request(staff, acme), _request(staff, acme)
    services_access.access_request_approve(actor=Actor(user=acme.owner, role="owner"), access_request=live)
    other = as_user(make_user("other-staff", is_staff=True))
    assert other.post(f"/platform/access/{pending.pk}/cancel/").status_code == 404
    assert other.post(f"/platform/access/{live.pk}/complete/").status_code == 404
    client = as_user(staff)
    assert f'data-testid="enter-{live.pk}"' in client.get("/platform/access/").content.decode()
    client.post(f"/platform/access/{pending.pk}/cancel/")
    client.post(f"/platform/access/{live.pk}/complete/")
    assert AccessRequest.objects.get(pk=pending.pk).state == State.CANCELLED
    assert AccessRequest.objects.get(pk=live.pk).state == State.COMPLETED
