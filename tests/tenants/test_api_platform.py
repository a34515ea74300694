"""/api/v1/platform/: tenants as platform staff see them, which is without any of their data."""

from __future__ import annotations

import pytest
from django.test import Client

from tenants.models import AuditEvent, Invitation, Membership, Tenant
from tests.conftest import make_tenant_cast
from tests.tenants.test_api import api_key, bearer, error_of

URL = "/api/v1/platform/tenants/"


def test_it_lists_tenants_without_their_data(acme, globex, staff, as_user):
    acme.tenant.display_name = "AcmeSecretBrand"
    acme.tenant.save(update_fields=["display_name"])

    response = as_user(staff).get(URL)

    assert response.status_code == 200
    assert response.json()["results"][0] == {
        "id": acme.tenant.pk,
        "slug": "acme",
        "name": "Acme Corporation",
        "status": "active",
        "created_at": acme.tenant.created_at.isoformat().replace("+00:00", "Z"),
        "member_count": 4,
    }
    assert [tenant["slug"] for tenant in response.json()["results"]] == ["acme", "globex"]
    assert "AcmeSecretBrand" not in response.content.decode()
    assert "acme-owner" not in response.content.decode()


def test_it_lists_tenants_in_a_constant_number_of_queries(acme, staff, as_user, django_assert_max_num_queries):
    client = as_user(staff)
    with django_assert_max_num_queries(8) as one:
        client.get(URL)
    for number in range(5):
        make_tenant_cast(f"tenant-{number}", f"Tenant {number}")

    with django_assert_max_num_queries(len(one.captured_queries)):
        assert client.get(URL).json()["count"] == 6


def test_it_creates_a_tenant_and_invites_its_owner(staff, as_user, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = as_user(staff).post(
            URL, {"slug": "initrode", "name": "Initrode", "owner_email": "boss@initrode.example"}, "application/json"
        )

    assert response.status_code == 201
    tenant = Tenant.objects.get(slug="initrode")
    assert response.json()["id"] == tenant.pk and response.json()["member_count"] == 0
    invitation = Invitation.objects.get(tenant=tenant)
    assert (invitation.email, invitation.role, invitation.invited_by) == ("boss@initrode.example", "owner", staff)
    created = AuditEvent.objects.get(action="tenant.created")
    assert (created.tenant, created.actor, created.actor_role) == (None, staff, "platform_staff")
    assert AuditEvent.objects.filter(action="team.invited", tenant=tenant).exists()


def test_it_refuses_a_taken_slug(acme, staff, as_user):
    response = as_user(staff).post(URL, {"slug": "acme", "name": "Another Acme"}, "application/json")

    assert error_of(response, 400)["fields"] == {"slug": ["A tenant with this slug exists."]}
    assert Tenant.objects.filter(slug="acme").count() == 1


def test_it_refuses_a_name_that_would_break_the_invitation_email(staff, as_user):
    """The owner's invitation puts the name in its subject line, where a line break is not allowed."""
    response = as_user(staff).post(
        URL,
        {"slug": "initrode", "name": "Initrode\nBcc: x@example.com", "owner_email": "boss@example.com"},
        "application/json",
    )

    assert set(error_of(response, 400)["fields"]) == {"name"}
    assert not Tenant.objects.filter(slug="initrode").exists()


def test_it_shows_one_tenant(acme, staff, as_user):
    response = as_user(staff).get(f"{URL}{acme.tenant.pk}/")

    assert response.json()["slug"] == "acme" and response.json()["member_count"] == 4
    assert error_of(as_user(staff).get(f"{URL}{acme.tenant.pk + 1000}/"), 404)["code"] == "not_found"


def test_it_suspends_and_reactivates_a_tenant(acme, staff, as_user):
    client = as_user(staff)

    suspended = client.post(f"{URL}{acme.tenant.pk}/suspend/")

    assert suspended.status_code == 200 and suspended.json()["status"] == "suspended"
    acme.tenant.refresh_from_db()
    assert acme.tenant.is_suspended
    # Recorded on the platform's log and on the tenant's own, so the tenant sees it too.
    assert {event.tenant for event in AuditEvent.objects.filter(action="tenant.suspended")} == {None, acme.tenant}

    reactivated = client.post(f"{URL}{acme.tenant.pk}/reactivate/")

    assert reactivated.json()["status"] == "active"
    acme.tenant.refresh_from_db()
    assert not acme.tenant.is_suspended
    assert AuditEvent.objects.filter(action="tenant.reactivated", actor=staff).count() == 2


@pytest.mark.parametrize("who", ["acme_owner", "outsider"])
def test_it_refuses_people_who_are_not_platform_staff(acme, outsider, as_user, who):
    client = as_user(acme.owner if who == "acme_owner" else outsider)

    assert error_of(client.get(URL), 403)["code"] == "permission_denied"
    assert error_of(client.post(URL, {"slug": "mine", "name": "Mine"}, "application/json"), 403)
    assert error_of(client.post(f"{URL}{acme.tenant.pk}/suspend/"), 403)
    assert not Tenant.objects.filter(slug="mine").exists()
    acme.tenant.refresh_from_db()
    assert not acme.tenant.is_suspended


def test_it_refuses_anonymous_people(acme):
    assert error_of(Client().get(URL), 401)["code"] == "not_authenticated"
    assert error_of(Client().post(f"{URL}{acme.tenant.pk}/suspend/"), 401)["code"] == "not_authenticated"


def test_it_never_lets_an_api_key_act_as_platform_staff(acme, staff):
    """A key belongs to one tenant, even when the person behind it is platform staff."""
    Membership.objects.create(tenant=acme.tenant, user=staff, role="owner")
    client = bearer(api_key(staff, acme.tenant))

    assert error_of(client.get(URL), 403)["code"] == "permission_denied"
    assert error_of(client.post(f"{URL}{acme.tenant.pk}/suspend/"), 403)["code"] == "permission_denied"
    acme.tenant.refresh_from_db()
    assert not acme.tenant.is_suspended
