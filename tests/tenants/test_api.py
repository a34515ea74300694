"""The REST API as a whole: credentials, the tenant boundary, the error shape and the schema.

Each group of routes has its own file (test_api_team.py, ...); the helpers here serve them all.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from rest_framework.throttling import SimpleRateThrottle

from tenants import services
from tenants.audit import SYSTEM
from tenants.models import ApiKey, AuditEvent, Membership
from tests.conftest import client_for

# Every route can be reached with an API key and with a browser session; tests run with both.
VIA = pytest.mark.parametrize("via", ["api_key", "session"])


def api_key(user, tenant, **extra) -> str:
    """Return a new raw API key of `user` in `tenant`."""
    return services.api_key_create(actor=SYSTEM, tenant=tenant, user=user, name="test key", **extra).raw_key


def bearer(raw_key: str) -> Client:
    return Client(headers={"authorization": f"Bearer {raw_key}"})


def api_client(user, tenant, via: str) -> Client:
    """Return a client that acts as `user`, through an API key for `tenant` or a session."""
    if via == "api_key":
        return bearer(api_key(user, tenant))
    return client_for(user)


def error_of(response, status: int) -> dict:
    """Assert the response is an API error in the one shape, and return its `error` object."""
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert {"code", "message"} <= set(body["error"]) <= {"code", "message", "fields"}
    return body["error"]


def test_it_refuses_a_revoked_key(acme):
    raw = api_key(acme.owner, acme.tenant)
    services.api_key_revoke(actor=SYSTEM, api_key=ApiKey.objects.get(user=acme.owner))

    response = bearer(raw).get("/api/v1/t/acme/team/")

    assert error_of(response, 401)["code"] == "not_authenticated"
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


def test_it_refuses_an_expired_key(acme, time_machine):
    expires_at = timezone.now() + timedelta(hours=1)
    raw = api_key(acme.owner, acme.tenant, expires_at=expires_at)
    assert bearer(raw).get("/api/v1/t/acme/team/").status_code == 200

    time_machine.move_to(expires_at + timedelta(seconds=1))

    assert error_of(bearer(raw).get("/api/v1/t/acme/team/"), 401)["code"] == "not_authenticated"


def test_it_refuses_an_unknown_key(acme):
    assert error_of(bearer("bpk_not-a-key").get("/api/v1/me/"), 401)["code"] == "not_authenticated"


def test_it_refuses_anonymous_people_in_the_error_shape(acme):
    anonymous = Client()

    assert error_of(anonymous.get("/api/v1/t/acme/team/"), 401)["code"] == "not_authenticated"
    assert error_of(anonymous.get("/api/v1/me/"), 401)["code"] == "not_authenticated"
    assert error_of(anonymous.post("/api/v1/platform/tenants/", {}), 401)["code"] == "not_authenticated"


def test_it_notes_when_a_key_was_last_used(acme):
    raw = api_key(acme.owner, acme.tenant)

    bearer(raw).get("/api/v1/me/")

    assert ApiKey.objects.get(user=acme.owner).last_used_at is not None


@VIA
def test_it_hides_acme_from_globex(acme, globex, via):
    client = api_client(globex.owner, globex.tenant, via)

    for path in ("team/", "settings/", "audit-events/", "api-keys/", "invitations/"):
        response = client.get(f"/api/v1/t/acme/{path}")
        assert error_of(response, 404)["code"] == "not_found"
        assert "Acme" not in response.content.decode()
    response = client.patch("/api/v1/t/acme/settings/", {"name": "Taken"}, content_type="application/json")
    assert error_of(response, 404)["code"] == "not_found"
    acme.tenant.refresh_from_db()
    assert acme.tenant.name == "Acme Corporation"


def test_it_keeps_a_globex_key_out_of_acme_even_for_a_member_of_both(acme, globex):
    """A key belongs to one tenant: its owner's membership elsewhere does not widen it."""
    Membership.objects.create(tenant=acme.tenant, user=globex.owner, role="owner")
    client = bearer(api_key(globex.owner, globex.tenant))

    assert error_of(client.get("/api/v1/t/acme/team/"), 404)["code"] == "not_found"
    assert client.get("/api/v1/t/globex/team/").status_code == 200
    assert client_for(globex.owner).get("/api/v1/t/acme/team/").status_code == 200


def test_it_lets_a_key_in_only_while_its_holder_is_a_member_and_with_their_role_of_now(acme):
    raw = api_key(acme.admin, acme.tenant)
    membership = Membership.objects.get(tenant=acme.tenant, user=acme.admin)
    assert bearer(raw).get("/api/v1/t/acme/team/").status_code == 200

    membership.role = "auditor"
    membership.save(update_fields=["role"])
    response = bearer(raw).post("/api/v1/t/acme/invitations/", {"email": "z@example.com", "role": "admin"})
    assert error_of(response, 403)["code"] == "permission_denied"

    membership.delete()  # without the revocation that removing a member through the team makes
    assert error_of(bearer(raw).get("/api/v1/t/acme/team/"), 404)["code"] == "not_found"


def test_it_reads_a_key_its_holder_tenant_and_membership_in_one_query(acme, django_assert_num_queries):
    from tenants.selectors import api_key_authenticate, tenant_access_get

    raw = api_key(acme.admin, acme.tenant)
    with django_assert_num_queries(1):
        key = api_key_authenticate(raw_key=raw)
        access = tenant_access_get(user=key.user, slug="acme", api_key=key)
    assert (key.user, key.tenant, access.tenant, access.membership.role) == (
        acme.admin,
        acme.tenant,
        acme.tenant,
        "admin",
    )
    assert access.membership.user is key.user


@VIA
def test_it_refuses_every_write_by_an_auditor_and_changes_nothing(acme, via):
    client = api_client(acme.auditor, acme.tenant, via)
    admin_membership = Membership.objects.get(user=acme.admin)
    invitation = services.invitation_create(actor=SYSTEM, tenant=acme.tenant, email="x@example.com", role="admin")
    events_before = AuditEvent.objects.count()
    writes = [
        ("patch", f"/api/v1/t/acme/team/{admin_membership.pk}/", {"role": "auditor"}),
        ("delete", f"/api/v1/t/acme/team/{admin_membership.pk}/", None),
        ("post", "/api/v1/t/acme/invitations/", {"email": "y@example.com", "role": "owner"}),
        ("delete", f"/api/v1/t/acme/invitations/{invitation.invitation.pk}/", None),
        ("patch", "/api/v1/t/acme/settings/", {"name": "Hijacked"}),
        ("patch", "/api/v1/t/acme/settings/security/", {"require_two_factor": True}),
    ]

    for method, url, body in writes:
        response = getattr(client, method)(url, body, content_type="application/json")
        assert error_of(response, 403)["code"] == "permission_denied", (method, url)

    assert AuditEvent.objects.count() == events_before
    admin_membership.refresh_from_db()
    assert admin_membership.role == "admin"
    acme.tenant.refresh_from_db()
    assert (acme.tenant.name, acme.tenant.require_two_factor) == ("Acme Corporation", False)


@VIA
def test_it_refuses_a_suspended_tenant(initech, via):
    client = api_client(initech.owner, initech.tenant, via)

    assert error_of(client.get("/api/v1/t/initech/team/"), 403)["code"] == "tenant_suspended"


def test_it_asks_sessions_for_two_factor_when_the_tenant_requires_it_but_not_keys(acme):
    services.tenant_set_two_factor_policy(actor=SYSTEM, tenant=acme.tenant, required=True)

    response = client_for(acme.owner).get("/api/v1/t/acme/team/")

    assert error_of(response, 403)["code"] == "two_factor_required"
    assert bearer(api_key(acme.owner, acme.tenant)).get("/api/v1/t/acme/team/").status_code == 200


def test_it_answers_invalid_input_in_the_error_shape(acme):
    client = bearer(api_key(acme.owner, acme.tenant))

    response = client.post("/api/v1/t/acme/invitations/", {"email": "nope"}, content_type="application/json")

    error = error_of(response, 400)
    assert error["code"] == "invalid"
    assert set(error["fields"]) == {"email", "role"}


def test_it_answers_malformed_json_in_the_error_shape(acme):
    client = bearer(api_key(acme.owner, acme.tenant))

    response = client.post("/api/v1/t/acme/invitations/", "{not json", content_type="application/json")

    assert error_of(response, 400)["code"] == "parse_error"


def test_it_answers_an_unsupported_method_in_the_error_shape(acme):
    client = bearer(api_key(acme.owner, acme.tenant))

    response = client.put("/api/v1/t/acme/settings/", {}, content_type="application/json")

    assert error_of(response, 405)["code"] == "method_not_allowed"


def test_it_slows_down_a_caller_in_the_error_shape(acme, monkeypatch):
    # The rates are read when DRF is imported, so override_settings cannot lower them.
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"anon": "2/min", "user": "2/min"})
    cache.clear()
    client = bearer(api_key(acme.owner, acme.tenant))
    try:
        assert [client.get("/api/v1/me/").status_code for _ in range(2)] == [200, 200]

        response = client.get("/api/v1/me/")
    finally:
        cache.clear()

    assert error_of(response, 429)["code"] == "throttled"
    assert int(response["Retry-After"]) > 0


@pytest.mark.django_db
def test_it_generates_a_valid_schema_without_warnings(tmp_path):
    schema_file = tmp_path / "schema.yaml"

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(schema_file))

    schema = schema_file.read_text()
    assert "/api/v1/t/{tenant_slug}/team/{membership_id}/" in schema
    assert "scheme: bearer" in schema


def test_it_serves_the_schema_to_anyone(client):
    response = client.get("/api/schema/", headers={"accept": "application/json"})

    assert response.status_code == 200
    schema = response.json()
    assert schema["components"]["securitySchemes"]["ApiKeyAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key made on the API keys page: `Authorization: Bearer <key>`.",
    }
    error = {"$ref": "#/components/schemas/Error"}
    team_member = schema["paths"]["/api/v1/t/{tenant_slug}/team/{membership_id}/"]
    for code in ("400", "401", "403", "404"):
        assert team_member["patch"]["responses"][code]["content"]["application/json"]["schema"] == error
