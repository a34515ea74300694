"""/api/v1/t/<slug>/invitations/: pending invitations, inviting people and revoking invitations."""

from __future__ import annotations

from datetime import timedelta

from django.core import mail
from django.utils import timezone

from tenants import services
from tenants.audit import SYSTEM
from tenants.models import AuditEvent, Invitation
from tests.tenants.test_api import VIA, api_client, error_of


def _invite(cast, email: str, role: str = "technician") -> Invitation:
    return services.invitation_create(actor=SYSTEM, tenant=cast.tenant, email=email, role=role).invitation


@VIA
def test_it_lists_pending_invitations_only(acme, globex, via):
    pending = _invite(acme, "pending@example.com")
    _invite(globex, "globex@example.com")
    services.invitation_revoke(actor=SYSTEM, invitation=_invite(acme, "revoked@example.com"))
    expired = _invite(acme, "expired@example.com")
    Invitation.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    response = api_client(acme.auditor, acme.tenant, via).get("/api/v1/t/acme/invitations/")

    assert response.status_code == 200
    assert response.json()["results"] == [
        {
            "id": pending.pk,
            "email": "pending@example.com",
            "role": "technician",
            "expires_at": pending.expires_at.isoformat().replace("+00:00", "Z"),
        }
    ]


def test_it_lists_invitations_in_a_constant_number_of_queries(acme, django_assert_max_num_queries):
    client = api_client(acme.owner, acme.tenant, "api_key")
    _invite(acme, "first@example.com")
    with django_assert_max_num_queries(8) as one:
        client.get("/api/v1/t/acme/invitations/")
    for number in range(15):
        _invite(acme, f"person-{number}@example.com")

    with django_assert_max_num_queries(len(one.captured_queries)):
        assert client.get("/api/v1/t/acme/invitations/").json()["count"] == 16


@VIA
def test_it_invites_a_person_by_email_without_showing_the_link(acme, via, django_capture_on_commit_callbacks):
    client = api_client(acme.owner, acme.tenant, via)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/api/v1/t/acme/invitations/",
            {"email": "new@example.com", "role": "admin"},
            content_type="application/json",
        )

    assert response.status_code == 201
    invitation = Invitation.objects.get(tenant=acme.tenant, email="new@example.com")
    assert response.json() == {
        "id": invitation.pk,
        "email": "new@example.com",
        "role": "admin",
        "expires_at": invitation.expires_at.isoformat().replace("+00:00", "Z"),
    }
    assert invitation.invited_by == acme.owner
    assert invitation.token_hash not in response.content.decode()
    [message] = mail.outbox
    assert message.to == ["new@example.com"]
    assert "/invitations/" in message.body and "/invitations/" not in response.content.decode()
    event = AuditEvent.objects.get(action="team.invited")
    assert (event.tenant, event.actor, event.after) == (
        acme.tenant,
        acme.owner,
        {"email": "new@example.com", "role": "admin"},
    )


@VIA
def test_it_refuses_an_admin_inviting(acme, via):
    response = api_client(acme.admin, acme.tenant, via).post(
        "/api/v1/t/acme/invitations/", {"email": "new@example.com", "role": "owner"}, content_type="application/json"
    )

    assert error_of(response, 403)["code"] == "permission_denied"
    assert not Invitation.objects.exists()


def test_it_refuses_an_invalid_invitation(acme):
    response = api_client(acme.owner, acme.tenant, "api_key").post(
        "/api/v1/t/acme/invitations/", {"email": "not an address", "role": "king"}, content_type="application/json"
    )

    assert set(error_of(response, 400)["fields"]) == {"email", "role"}
    assert not Invitation.objects.exists()


@VIA
def test_it_revokes_an_invitation(acme, via):
    invitation = _invite(acme, "new@example.com")

    response = api_client(acme.owner, acme.tenant, via).delete(f"/api/v1/t/acme/invitations/{invitation.pk}/")

    assert response.status_code == 204
    invitation.refresh_from_db()
    assert invitation.revoked_at is not None
    event = AuditEvent.objects.get(action="team.invitation_revoked")
    assert (event.tenant, event.actor, event.target_id) == (acme.tenant, acme.owner, str(invitation.pk))


def test_it_does_not_revoke_twice(acme):
    invitation = _invite(acme, "new@example.com")
    client = api_client(acme.owner, acme.tenant, "api_key")
    assert client.delete(f"/api/v1/t/acme/invitations/{invitation.pk}/").status_code == 204

    assert error_of(client.delete(f"/api/v1/t/acme/invitations/{invitation.pk}/"), 404)["code"] == "not_found"
    assert AuditEvent.objects.filter(action="team.invitation_revoked").count() == 1


@VIA
def test_it_does_not_find_another_tenants_invitation(acme, globex, via):
    invitation = _invite(globex, "globex@example.com")

    response = api_client(acme.owner, acme.tenant, via).delete(f"/api/v1/t/acme/invitations/{invitation.pk}/")

    assert error_of(response, 404)["code"] == "not_found"
    invitation.refresh_from_db()
    assert invitation.revoked_at is None
