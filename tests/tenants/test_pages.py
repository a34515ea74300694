"""Tenant admin pages: dashboard, team, settings, audit log, API keys, and the tenant boundary."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from tenants import services
from tenants.audit import SYSTEM, audit_record
from tenants.models import ApiKey, AuditEvent, Invitation, Membership, Tenant
from tenants.roles import Role

pytestmark = pytest.mark.django_db


def _events(tenant, action):
    return AuditEvent.objects.filter(tenant=tenant, action=action)


def test_it_shows_the_dashboard_with_the_tenants_name_and_colour(acme, as_user):
    acme.tenant.display_name, acme.tenant.accent_colour = "Acme Backup", "#aa3300"
    acme.tenant.save()
    response = as_user(acme.technician).get("/t/acme/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "Acme Backup" in body and "--accent: #aa3300" in body
    assert response.context["summary"]["members"] == 4


def test_it_404s_for_a_tenant_the_person_does_not_belong_to(acme, globex, as_user):
    assert as_user(globex.owner).get("/t/acme/").status_code == 404
    assert as_user(acme.owner).get("/t/no-such-tenant/").status_code == 404


def test_it_lets_a_person_in_two_tenants_use_both(acme, globex, as_user):
    Membership.objects.create(tenant=globex.tenant, user=acme.owner, role=Role.AUDITOR)
    client = as_user(acme.owner)
    assert client.get("/t/acme/team/").status_code == 200
    assert client.get("/t/globex/audit/").status_code == 200
    # As an auditor in globex the same person cannot manage globex's team.
    globex_admin = Membership.objects.get(tenant=globex.tenant, user=globex.admin)
    assert client.post(f"/t/globex/team/{globex_admin.pk}/remove/").status_code == 403


def test_it_invites_an_admin_and_records_it(acme, as_user, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = as_user(acme.owner).post("/t/acme/team/invite/", {"email": "new@example.com", "role": "admin"})
    assert response.status_code == 302
    invitation = Invitation.objects.get(tenant=acme.tenant, email="new@example.com")
    assert invitation.role == "admin" and invitation.invited_by == acme.owner
    assert len(mail.outbox) == 1 and "/invitations/" in mail.outbox[0].body
    # Only the hash of the token is stored: the link's token is not in the row.
    token = mail.outbox[0].body.split("/invitations/")[1].split("/")[0]
    assert token not in invitation.token_hash
    event = _events(acme.tenant, "team.invited").get()
    assert event.actor == acme.owner and event.actor_role == "owner" and event.after["email"] == "new@example.com"


def test_it_lets_only_owners_manage_the_team(acme, as_user):
    response = as_user(acme.admin).post("/t/acme/team/invite/", {"email": "x@example.com", "role": "admin"})
    assert response.status_code == 403
    assert not Invitation.objects.exists()


def test_it_changes_a_role_and_keeps_the_last_owner(acme, as_user):
    client = as_user(acme.owner)
    technician = Membership.objects.get(tenant=acme.tenant, user=acme.technician)
    client.post(f"/t/acme/team/{technician.pk}/role/", {"role": "admin"})
    technician.refresh_from_db()
    assert technician.role == "admin"
    event = _events(acme.tenant, "team.role_changed").get()
    assert event.before["role"] == "technician" and event.after["role"] == "admin"

    owner = Membership.objects.get(tenant=acme.tenant, user=acme.owner)
    client.post(f"/t/acme/team/{owner.pk}/role/", {"role": "auditor"})
    owner.refresh_from_db()
    assert owner.role == "owner"
    client.post(f"/t/acme/team/{owner.pk}/remove/")
    assert Membership.objects.filter(pk=owner.pk).exists()


def test_it_removes_a_member_and_revokes_their_keys(acme, as_user):
    key = services.api_key_create(actor=SYSTEM, tenant=acme.tenant, user=acme.admin, name="ci")
    admin = Membership.objects.get(tenant=acme.tenant, user=acme.admin)
    as_user(acme.owner).post(f"/t/acme/team/{admin.pk}/remove/")
    assert not Membership.objects.filter(pk=admin.pk).exists()
    assert ApiKey.objects.get(pk=key.api_key.pk).revoked_at is not None
    assert _events(acme.tenant, "team.member_removed").count() == 1


def test_it_404s_for_another_tenants_member_ids(acme, globex, as_user):
    globex_admin = Membership.objects.get(tenant=globex.tenant, user=globex.admin)
    response = as_user(acme.owner).post(f"/t/acme/team/{globex_admin.pk}/remove/")
    assert response.status_code == 404
    assert Membership.objects.filter(pk=globex_admin.pk).exists()


def test_it_saves_settings_and_shows_the_new_name(acme, as_user):
    client = as_user(acme.admin)
    response = client.post(
        "/t/acme/settings/", {"name": "Acme Ltd", "display_name": "Acme Cloud Backup", "accent_colour": "#123456"}
    )
    assert response.status_code == 302
    acme.tenant.refresh_from_db()
    assert (acme.tenant.name, acme.tenant.display_name, acme.tenant.accent_colour) == (
        "Acme Ltd",
        "Acme Cloud Backup",
        "#123456",
    )
    event = _events(acme.tenant, "tenant.settings_changed").get()
    assert event.before["name"] == "Acme Corporation" and event.after["name"] == "Acme Ltd"
    assert "Acme Cloud Backup" in client.get("/t/acme/team/").content.decode()


def test_it_rejects_a_bad_colour(acme, as_user):
    response = as_user(acme.owner).post("/t/acme/settings/", {"name": "Acme", "accent_colour": "red"})
    assert response.status_code == 200 and "Use a colour like" in response.content.decode()
    acme.tenant.refresh_from_db()
    assert acme.tenant.accent_colour == "#1f6feb"


def test_it_lets_only_owners_require_two_factor(acme, as_user):
    assert as_user(acme.admin).post("/t/acme/settings/security/", {"require_two_factor": "on"}).status_code == 403
    as_user(acme.owner).post("/t/acme/settings/security/", {"require_two_factor": "on"})
    acme.tenant.refresh_from_db()
    assert acme.tenant.require_two_factor
    assert _events(acme.tenant, "tenant.two_factor_policy_changed").count() == 1


def test_it_redirects_unverified_members_when_two_factor_is_required(acme, as_user):
    acme.tenant.require_two_factor = True
    acme.tenant.save()
    response = as_user(acme.admin).get("/t/acme/team/")
    assert response.status_code == 302 and response["Location"] == "/account/two-factor/"


def test_it_stores_a_logo_and_serves_it_sandboxed(acme, as_user):
    from django.core.files.uploadedfile import SimpleUploadedFile

    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    upload = SimpleUploadedFile("logo.svg", svg, content_type="image/svg+xml")
    as_user(acme.owner).post("/t/acme/settings/logo/", {"logo": upload})
    response = as_user(acme.auditor).get("/t/acme/logo/")
    assert response.status_code == 200 and response.content == svg
    assert "sandbox" in response["Content-Security-Policy"]


def test_it_refuses_a_logo_that_is_not_an_image(acme, as_user):
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("x.html", b"<script>", content_type="text/html")
    as_user(acme.owner).post("/t/acme/settings/logo/", {"logo": upload})
    acme.tenant.refresh_from_db()
    assert acme.tenant.logo_content_type == ""


def _seed_events(tenant, count):
    for number in range(count):
        audit_record(actor=SYSTEM, tenant=tenant, action=f"seed.{'even' if number % 2 == 0 else 'odd'}")


def test_it_pages_and_filters_the_audit_log(acme, as_user, django_assert_max_num_queries):
    _seed_events(acme.tenant, 120)
    client = as_user(acme.auditor)
    with django_assert_max_num_queries(8):
        first = client.get("/t/acme/audit/")
    assert len(first.context["events"]) == 50 and first.context["has_next"]
    third = client.get("/t/acme/audit/?page=3")
    assert len(third.context["events"]) == 20 and not third.context["has_next"]
    filtered = client.get("/t/acme/audit/?action=seed.odd")
    assert {event.action for event in filtered.context["events"]} == {"seed.odd"}
    assert not filtered.context["live"]


def test_it_answers_htmx_with_the_table_only(acme, as_user):
    _seed_events(acme.tenant, 3)
    response = as_user(acme.owner).get("/t/acme/audit/?action=seed", headers={"HX-Request": "true"})
    body = response.content.decode()
    assert "<table" in body and "<html" not in body


def test_it_exports_the_audit_log_as_csv_without_formulas(acme, globex, as_user):
    audit_record(actor=SYSTEM, tenant=acme.tenant, action="seed.csv", target_id="=HYPERLINK(1)")
    audit_record(actor=SYSTEM, tenant=globex.tenant, action="seed.globex")
    response = as_user(acme.owner).get("/t/acme/audit/export.csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:5] == ["id", "time", "actor", "role", "action"]
    actions = [row[4] for row in rows[1:]]
    assert "seed.csv" in actions and "seed.globex" not in actions
    assert any(row[6] == "'=HYPERLINK(1)" for row in rows[1:])


def test_it_keeps_the_audit_log_from_technicians(acme, as_user):
    assert as_user(acme.technician).get("/t/acme/audit/").status_code == 403
    assert as_user(acme.technician).get("/t/acme/audit/export.csv").status_code == 403


def test_it_shows_a_new_api_key_once_and_stores_its_hash(acme, as_user):
    client = as_user(acme.technician)
    response = client.post("/t/acme/api-keys/", {"name": "scripts"})
    raw_key = response.context["issued"].raw_key
    key = ApiKey.objects.get(tenant=acme.tenant, user=acme.technician)
    assert raw_key not in key.key_hash and raw_key.startswith(key.prefix)
    assert raw_key not in client.get("/t/acme/api-keys/").content.decode()
    api = client_with_key(raw_key)
    assert api.get("/api/v1/me/").status_code == 200
    client.post(f"/t/acme/api-keys/{key.pk}/revoke/")
    assert client_with_key(raw_key).get("/api/v1/me/").status_code == 401
    assert [event.action for event in AuditEvent.objects.filter(tenant=acme.tenant).order_by("id")][-2:] == [
        "apikey.created",
        "apikey.revoked",
    ]


def test_it_refuses_an_expiry_in_the_past(acme, as_user):
    yesterday = (timezone.now() - timedelta(days=1)).date().isoformat()
    response = as_user(acme.owner).post("/t/acme/api-keys/", {"name": "old", "expires_on": yesterday})
    assert response.status_code == 200 and not ApiKey.objects.exists()


def test_it_does_not_let_one_admin_revoke_anothers_key(acme, as_user):
    key = services.api_key_create(actor=SYSTEM, tenant=acme.tenant, user=acme.admin, name="mine")
    assert as_user(acme.owner).post(f"/t/acme/api-keys/{key.api_key.pk}/revoke/").status_code == 404
    assert ApiKey.objects.get(pk=key.api_key.pk).revoked_at is None


def client_with_key(raw_key):
    from django.test import Client

    return Client(headers={"authorization": f"Bearer {raw_key}"})


def test_it_shows_a_suspended_tenant_only_its_notice(initech, as_user):
    client = as_user(initech.owner)
    response = client.get("/t/initech/team/")
    assert response.status_code == 302 and response["Location"] == "/t/initech/suspended/"
    assert "is suspended" in client.get("/t/initech/suspended/").content.decode()


def test_it_sends_an_active_tenant_away_from_the_suspended_notice(acme, as_user):
    assert as_user(acme.owner).get("/t/acme/suspended/")["Location"] == "/t/acme/"


# --- Platform staff -------------------------------------------------------------------------


def test_it_lets_staff_create_suspend_and_reactivate_tenants(staff, as_user):
    client = as_user(staff)
    client.post("/platform/tenants/new/", {"slug": "hooli", "name": "Hooli", "owner_email": "gavin@hooli.example"})
    tenant = Tenant.objects.get(slug="hooli")
    assert Invitation.objects.get(tenant=tenant).role == "owner"
    client.post(f"/platform/tenants/{tenant.pk}/suspend/")
    tenant.refresh_from_db()
    assert tenant.is_suspended
    client.post(f"/platform/tenants/{tenant.pk}/reactivate/")
    tenant.refresh_from_db()
    assert not tenant.is_suspended
    platform_actions = list(AuditEvent.objects.filter(tenant=None).values_list("action", flat=True))
    assert {"tenant.created", "tenant.suspended", "tenant.reactivated"} <= set(platform_actions)
    # The tenant sees in its own log that it was suspended and by whom.
    assert AuditEvent.objects.filter(tenant=tenant, action="tenant.suspended", actor=staff).exists()


def test_it_shows_staff_the_tenants_but_no_tenant_data(acme, staff, as_user):
    audit_record(actor=SYSTEM, tenant=acme.tenant, action="seed.private", target_id="private-target")
    body = as_user(staff).get("/platform/").content.decode()
    assert "acme" in body and "private-target" not in body and "acme-owner" not in body


def test_it_keeps_platform_pages_from_tenant_admins(acme, as_user):
    assert as_user(acme.owner).get("/platform/").status_code == 404
