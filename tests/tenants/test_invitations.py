from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client
from django.utils import timezone

from tenants import services
from tenants.audit import Actor
from tenants.models import AuditEvent, Invitation, Membership
from tenants.roles import Role
from tests.conftest import PASSWORD

NEW_PASSWORD = "a long and unusual passphrase"


@pytest.fixture
def invited(acme, django_capture_on_commit_callbacks):
    """An invitation to acme as technician, sent by acme's owner; returns (invitation, path)."""
    with django_capture_on_commit_callbacks(execute=True):
        issued = services.invitation_create(
            actor=Actor(user=acme.owner, role=Role.OWNER),
            tenant=acme.tenant,
            email="newbie@example.com",
            role="technician",
        )
    return issued.invitation, urlsplit(issued.link).path


def signup(client: Client, path: str, **overrides: str):
    data = {"username": "newbie", "email": "newbie@example.com", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD}
    return client.post(path, {**data, **overrides})


def test_it_emails_the_link(invited, acme):
    invitation, path = invited
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["newbie@example.com"]
    assert path in message.body
    assert "acme-owner" in message.body and "Acme Corporation" in message.body and "technician" in message.body
    assert PASSWORD not in message.body


def test_it_shows_the_tenant_and_role(invited):
    _invitation, path = invited
    response = Client().get(path)
    assert response.status_code == 200
    assert b"Acme Corporation" in response.content and b"Technician" in response.content
    assert b'value="newbie@example.com"' in response.content
    assert f'href="/login/?next={path}"'.encode() in response.content


def test_it_brings_a_person_who_logs_in_first_back_to_the_invitation(invited, outsider):
    _invitation, path = invited
    client = Client()
    response = client.post(f"/login/?next={path}", {"username": "outsider", "password": PASSWORD, "next": path})
    assert response.status_code == 302 and response["Location"] == path
    assert client.post(path)["Location"] == "/t/acme/"
    assert Membership.objects.filter(user=outsider).exists()


def test_it_creates_an_account_and_accepts(invited, acme):
    invitation, path = invited
    client = Client()
    response = signup(client, path)
    assert response.status_code == 302 and response["Location"] == "/t/acme/"

    user = get_user_model().objects.get(username="newbie")
    assert user.email == "newbie@example.com" and user.check_password(NEW_PASSWORD)
    assert Membership.objects.get(tenant=acme.tenant, user=user).role == Role.TECHNICIAN
    assert client.session["_auth_user_id"] == str(user.pk)
    invitation.refresh_from_db()
    assert invitation.accepted_by == user and invitation.accepted_at is not None
    event = AuditEvent.objects.get(action="team.invitation_accepted")
    assert event.tenant == acme.tenant and event.actor == user and event.actor_role == Role.TECHNICIAN
    assert client.get("/t/acme/").status_code == 200


def test_it_validates_the_new_account(invited, acme):
    _invitation, path = invited
    cases = [
        ({"password2": "something else entirely"}, b"The two passwords differ"),
        ({"password1": "short", "password2": "short"}, b"too short"),
        ({"username": "ACME-OWNER"}, b"This username is taken"),
        ({"username": "no spaces please"}, b"Enter a valid username"),
    ]
    for overrides, message in cases:
        response = signup(Client(), path, **overrides)
        assert response.status_code == 200 and message in response.content, overrides
    assert not get_user_model().objects.filter(username="newbie").exists()
    assert Invitation.objects.get().accepted_at is None


def test_it_lets_a_logged_in_person_accept(invited, outsider, as_user, acme):
    invitation, path = invited
    client = as_user(outsider)
    response = client.get(path)
    assert b"Accept and join as outsider" in response.content
    response = client.post(path)
    assert response.status_code == 302 and response["Location"] == "/t/acme/"
    assert Membership.objects.get(tenant=acme.tenant, user=outsider).role == Role.TECHNICIAN
    invitation.refresh_from_db()
    assert invitation.accepted_by == outsider
    assert AuditEvent.objects.filter(action="team.invitation_accepted", actor=outsider, tenant=acme.tenant).exists()


def test_it_keeps_an_existing_members_role(invited, acme, as_user):
    _invitation, path = invited
    assert as_user(acme.admin).post(path).status_code == 302
    assert Membership.objects.get(tenant=acme.tenant, user=acme.admin).role == Role.ADMIN
    assert AuditEvent.objects.filter(action="team.invitation_accepted_existing_member").exists()


def test_it_works_only_once(invited, outsider, as_user):
    _invitation, path = invited
    assert signup(Client(), path).status_code == 302
    assert Client().get(path).status_code == 404
    assert as_user(outsider).post(path).status_code == 404
    assert signup(Client(), path, username="second").status_code == 404
    assert not Membership.objects.filter(user=outsider).exists()


def test_it_refuses_an_expired_invitation(invited, outsider, as_user):
    invitation, path = invited
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert Client().get(path).status_code == 404
    assert as_user(outsider).post(path).status_code == 404
    assert not Membership.objects.filter(user=outsider).exists()


def test_it_refuses_a_revoked_invitation(invited, acme, outsider, as_user):
    invitation, path = invited
    services.invitation_revoke(actor=Actor(user=acme.owner, role=Role.OWNER), invitation=invitation)
    assert Client().get(path).status_code == 404
    assert as_user(outsider).post(path).status_code == 404
    assert signup(Client(), path).status_code == 404
    assert not get_user_model().objects.filter(username="newbie").exists()


def test_it_refuses_an_unknown_token(db):
    assert Client().get("/invitations/not-a-real-token/").status_code == 404
