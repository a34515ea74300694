"""/api/v1/t/<slug>/team/: the members of a tenant and their roles."""

from __future__ import annotations

from tenants.models import ApiKey, AuditEvent, Membership
from tests.conftest import make_user
from tests.tenants.test_api import VIA, api_client, api_key, bearer, error_of


def _membership(user) -> Membership:
    return Membership.objects.get(user=user)


@VIA
def test_it_lists_the_team(acme, globex, via):
    response = api_client(acme.technician, acme.tenant, via).get("/api/v1/t/acme/team/")

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 4
    assert [member["username"] for member in body["results"]] == [
        "acme-admin",
        "acme-auditor",
        "acme-owner",
        "acme-technician",
    ]
    owner = _membership(acme.owner)
    assert body["results"][2] == {
        "id": owner.pk,
        "username": "acme-owner",
        "email": "acme-owner@example.com",
        "role": "owner",
        "created_at": owner.created_at.isoformat().replace("+00:00", "Z"),
    }


def test_it_lists_the_team_in_a_constant_number_of_queries(acme, django_assert_max_num_queries):
    client = api_client(acme.owner, acme.tenant, "session")
    with django_assert_max_num_queries(8) as small:
        client.get("/api/v1/t/acme/team/")
    for number in range(20):
        Membership.objects.create(tenant=acme.tenant, user=make_user(f"extra-{number}"), role="technician")

    with django_assert_max_num_queries(len(small.captured_queries)):
        response = client.get("/api/v1/t/acme/team/")

    assert response.json()["count"] == 24


@VIA
def test_it_shows_one_member(acme, via):
    admin = _membership(acme.admin)

    response = api_client(acme.auditor, acme.tenant, via).get(f"/api/v1/t/acme/team/{admin.pk}/")

    assert response.status_code == 200
    assert response.json()["username"] == "acme-admin"


@VIA
def test_it_does_not_find_another_tenants_member(acme, globex, via):
    client = api_client(acme.owner, acme.tenant, via)
    globex_admin = _membership(globex.admin)

    assert error_of(client.get(f"/api/v1/t/acme/team/{globex_admin.pk}/"), 404)["code"] == "not_found"
    response = client.patch(f"/api/v1/t/acme/team/{globex_admin.pk}/", {"role": "auditor"}, "application/json")
    assert error_of(response, 404)["code"] == "not_found"
    assert error_of(client.delete(f"/api/v1/t/acme/team/{globex_admin.pk}/"), 404)["code"] == "not_found"

    globex_admin.refresh_from_db()
    assert globex_admin.role == "admin"


@VIA
def test_it_changes_a_role(acme, via):
    admin = _membership(acme.admin)

    response = api_client(acme.owner, acme.tenant, via).patch(
        f"/api/v1/t/acme/team/{admin.pk}/", {"role": "technician"}, content_type="application/json"
    )

    assert response.status_code == 200
    assert response.json()["role"] == "technician"
    admin.refresh_from_db()
    assert admin.role == "technician"
    event = AuditEvent.objects.get(action="team.role_changed")
    assert (event.tenant, event.actor, event.actor_role) == (acme.tenant, acme.owner, "owner")
    assert (event.before, event.after) == (
        {"user": "acme-admin", "role": "admin"},
        {"user": "acme-admin", "role": "technician"},
    )


def test_it_changes_nothing_for_an_empty_patch(acme):
    admin = _membership(acme.admin)

    response = api_client(acme.owner, acme.tenant, "api_key").patch(
        f"/api/v1/t/acme/team/{admin.pk}/", {}, content_type="application/json"
    )

    assert response.status_code == 200
    assert not AuditEvent.objects.filter(action="team.role_changed").exists()


@VIA
def test_it_refuses_a_technician_changing_the_team(acme, via):
    client = api_client(acme.technician, acme.tenant, via)
    admin = _membership(acme.admin)

    response = client.patch(f"/api/v1/t/acme/team/{admin.pk}/", {"role": "owner"}, content_type="application/json")

    assert error_of(response, 403)["code"] == "permission_denied"
    assert error_of(client.delete(f"/api/v1/t/acme/team/{admin.pk}/"), 403)["code"] == "permission_denied"
    admin.refresh_from_db()
    assert admin.role == "admin"


def test_it_refuses_an_admin_changing_the_team(acme):
    """Managing the team is the owners' alone."""
    technician = _membership(acme.technician)
    client = api_client(acme.admin, acme.tenant, "api_key")

    response = client.patch(f"/api/v1/t/acme/team/{technician.pk}/", {"role": "admin"}, "application/json")

    assert error_of(response, 403)["code"] == "permission_denied"


def test_it_refuses_an_unknown_role(acme):
    admin = _membership(acme.admin)

    response = api_client(acme.owner, acme.tenant, "api_key").patch(
        f"/api/v1/t/acme/team/{admin.pk}/", {"role": "emperor"}, content_type="application/json"
    )

    assert set(error_of(response, 400)["fields"]) == {"role"}
    admin.refresh_from_db()
    assert admin.role == "admin"


@VIA
def test_it_keeps_the_last_owner(acme, via):
    owner = _membership(acme.owner)
    client = api_client(acme.owner, acme.tenant, via)
    events_before = AuditEvent.objects.count()

    demote = client.patch(f"/api/v1/t/acme/team/{owner.pk}/", {"role": "admin"}, content_type="application/json")
    remove = client.delete(f"/api/v1/t/acme/team/{owner.pk}/")

    for response in (demote, remove):
        error = error_of(response, 400)
        assert error["code"] == "invalid"
        assert error["fields"] == {"non_field_errors": ["A tenant must keep at least one owner."]}
    owner.refresh_from_db()
    assert owner.role == "owner"
    assert AuditEvent.objects.count() == events_before


@VIA
def test_it_removes_a_member_and_revokes_their_keys(acme, via):
    admin = _membership(acme.admin)
    admins_key = api_key(acme.admin, acme.tenant)

    response = api_client(acme.owner, acme.tenant, via).delete(f"/api/v1/t/acme/team/{admin.pk}/")

    assert response.status_code == 204
    assert not Membership.objects.filter(pk=admin.pk).exists()
    assert ApiKey.objects.get(user=acme.admin).revoked_at is not None
    event = AuditEvent.objects.get(action="team.member_removed")
    assert (event.tenant, event.actor, event.before) == (
        acme.tenant,
        acme.owner,
        {"user": "acme-admin", "role": "admin"},
    )
    assert error_of(api_client(acme.admin, acme.tenant, "session").get("/api/v1/t/acme/team/"), 404)
    assert error_of(bearer(admins_key).get("/api/v1/me/"), 401)


def test_it_lets_an_owner_hand_over_and_step_down_and_their_key_follows(acme):
    client = api_client(acme.owner, acme.tenant, "api_key")
    admin, owner = _membership(acme.admin), _membership(acme.owner)

    assert client.patch(f"/api/v1/t/acme/team/{admin.pk}/", {"role": "owner"}, "application/json").status_code == 200
    assert client.patch(f"/api/v1/t/acme/team/{owner.pk}/", {"role": "admin"}, "application/json").status_code == 200

    assert set(Membership.objects.filter(tenant=acme.tenant, role="owner")) == {admin}
    assert AuditEvent.objects.filter(action="team.role_changed").count() == 2
    # The key carries its owner's role as it is now, not as it was when the key was made.
    response = client.patch(f"/api/v1/t/acme/team/{owner.pk}/", {"role": "owner"}, "application/json")
    assert error_of(response, 403)["code"] == "permission_denied"
