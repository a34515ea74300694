"""/api/v1/t/<slug>/settings/ and settings/security/: branding and the two-factor policy."""

from __future__ import annotations

from tenants.models import AuditEvent
from tests.tenants.test_api import VIA, api_client, error_of


@VIA
def test_it_shows_the_settings(acme, via):
    response = api_client(acme.technician, acme.tenant, via).get("/api/v1/t/acme/settings/")

    assert response.status_code == 200
    assert response.json() == {
        "slug": "acme",
        "name": "Acme Corporation",
        "display_name": "",
        "accent_colour": "#1f6feb",
        "require_two_factor": False,
    }


@VIA
def test_it_changes_the_settings_it_is_given(acme, via):
    response = api_client(acme.admin, acme.tenant, via).patch(
        "/api/v1/t/acme/settings/", {"display_name": "Acme", "accent_colour": "#00aa00"}, "application/json"
    )

    assert response.status_code == 200
    assert response.json()["display_name"] == "Acme"
    acme.tenant.refresh_from_db()
    assert (acme.tenant.name, acme.tenant.display_name, acme.tenant.accent_colour) == (
        "Acme Corporation",
        "Acme",
        "#00aa00",
    )
    event = AuditEvent.objects.get(action="tenant.settings_changed")
    assert (event.tenant, event.actor, event.actor_role) == (acme.tenant, acme.admin, "admin")
    assert event.after == {"name": "Acme Corporation", "display_name": "Acme", "accent_colour": "#00aa00"}


def test_it_ignores_require_two_factor_in_the_settings(acme):
    """The two-factor policy is the owner's, on its own route; here it is read-only."""
    response = api_client(acme.admin, acme.tenant, "api_key").patch(
        "/api/v1/t/acme/settings/", {"require_two_factor": True}, "application/json"
    )

    assert response.status_code == 200
    acme.tenant.refresh_from_db()
    assert acme.tenant.require_two_factor is False
    assert not AuditEvent.objects.filter(action__startswith="tenant.").exists()


def test_it_refuses_invalid_settings(acme):
    client = api_client(acme.owner, acme.tenant, "api_key")

    response = client.patch("/api/v1/t/acme/settings/", {"name": "", "accent_colour": "blue"}, "application/json")

    assert set(error_of(response, 400)["fields"]) == {"name", "accent_colour"}
    acme.tenant.refresh_from_db()
    assert acme.tenant.accent_colour == "#1f6feb"


def test_it_refuses_names_of_more_than_one_line(acme):
    """Names go into e-mail subject lines, where a line break is not allowed."""
    client = api_client(acme.owner, acme.tenant, "api_key")

    response = client.patch(
        "/api/v1/t/acme/settings/", {"name": "A\nB", "display_name": "C\u2028D"}, "application/json"
    )

    assert set(error_of(response, 400)["fields"]) == {"name", "display_name"}
    acme.tenant.refresh_from_db()
    assert acme.tenant.name == "Acme Corporation"


@VIA
def test_it_refuses_a_technician_changing_the_settings(acme, via):
    response = api_client(acme.technician, acme.tenant, via).patch(
        "/api/v1/t/acme/settings/", {"name": "Technicians Inc"}, "application/json"
    )

    assert error_of(response, 403)["code"] == "permission_denied"
    acme.tenant.refresh_from_db()
    assert acme.tenant.name == "Acme Corporation"


@VIA
def test_it_lets_the_owner_require_two_factor(acme, via):
    response = api_client(acme.owner, acme.tenant, via).patch(
        "/api/v1/t/acme/settings/security/", {"require_two_factor": True}, "application/json"
    )

    assert response.status_code == 200
    assert response.json()["require_two_factor"] is True
    acme.tenant.refresh_from_db()
    assert acme.tenant.require_two_factor is True
    event = AuditEvent.objects.get(action="tenant.two_factor_policy_changed")
    assert (event.actor, event.before, event.after) == (
        acme.owner,
        {"require_two_factor": False},
        {"require_two_factor": True},
    )


@VIA
def test_it_refuses_an_admin_changing_the_security_policy(acme, via):
    response = api_client(acme.admin, acme.tenant, via).patch(
        "/api/v1/t/acme/settings/security/", {"require_two_factor": True}, "application/json"
    )

    assert error_of(response, 403)["code"] == "permission_denied"
    acme.tenant.refresh_from_db()
    assert acme.tenant.require_two_factor is False


def test_it_refuses_a_policy_that_is_not_a_boolean(acme):
    response = api_client(acme.owner, acme.tenant, "api_key").patch(
        "/api/v1/t/acme/settings/security/", {"require_two_factor": "perhaps"}, "application/json"
    )

    assert set(error_of(response, 400)["fields"]) == {"require_two_factor"}
