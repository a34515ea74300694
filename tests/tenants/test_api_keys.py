"""/api/v1/t/<slug>/api-keys/: each admin's own keys."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from tenants import services
from tenants.audit import SYSTEM
from tenants.models import ApiKey, AuditEvent
from tests.tenants.test_api import VIA, api_client, api_key, bearer, error_of

URL = "/api/v1/t/acme/api-keys/"


@VIA
def test_it_lists_only_the_callers_own_keys_in_this_tenant(acme, globex, via):
    client = api_client(acme.auditor, acme.tenant, via)
    mine = services.api_key_create(actor=SYSTEM, tenant=acme.tenant, user=acme.auditor, name="reporting").api_key
    api_key(acme.owner, acme.tenant)
    api_key(globex.auditor, globex.tenant)

    response = client.get(URL)

    assert response.status_code == 200
    names = [key["name"] for key in response.json()["results"]]
    assert "reporting" in names
    assert len(names) == ApiKey.objects.filter(user=acme.auditor, tenant=acme.tenant).count()
    listed = next(key for key in response.json()["results"] if key["id"] == mine.pk)
    assert set(listed) == {"id", "name", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at"}
    assert listed["prefix"] == mine.prefix


def test_it_lists_keys_in_a_constant_number_of_queries(acme, django_assert_max_num_queries):
    client = api_client(acme.owner, acme.tenant, "api_key")
    with django_assert_max_num_queries(8) as one:
        client.get(URL)
    for _ in range(10):
        api_key(acme.owner, acme.tenant)

    with django_assert_max_num_queries(len(one.captured_queries)):
        assert client.get(URL).json()["count"] == 11


@VIA
def test_it_makes_a_key_and_shows_it_once(acme, via):
    client = api_client(acme.technician, acme.tenant, via)
    expires_at = timezone.now() + timedelta(days=30)

    response = client.post(URL, {"name": "backup script", "expires_at": expires_at.isoformat()}, "application/json")

    assert response.status_code == 201
    body = response.json()
    key = ApiKey.objects.get(name="backup script")
    assert (key.tenant, key.user, key.expires_at) == (acme.tenant, acme.technician, expires_at)
    assert body["id"] == key.pk and body["key"].startswith(key.prefix)
    assert body["key"] not in client.get(URL).content.decode()
    event = AuditEvent.objects.get(action="apikey.created", target_id=str(key.pk))
    assert (event.tenant, event.actor, event.actor_role) == (acme.tenant, acme.technician, "technician")
    # The new key works, with its owner's role: a technician's key reads the team but cannot manage it.
    new_client = bearer(body["key"])
    assert new_client.get("/api/v1/t/acme/team/").status_code == 200
    assert error_of(new_client.post("/api/v1/t/acme/invitations/", {}, "application/json"), 403)


def test_it_refuses_an_expiry_in_the_past(acme):
    client = api_client(acme.owner, acme.tenant, "session")

    response = client.post(URL, {"name": "late", "expires_at": "2000-01-01T00:00:00Z"}, "application/json")

    assert error_of(response, 400)["fields"] == {"expires_at": ["The expiry must be in the future."]}
    assert not ApiKey.objects.filter(name="late").exists()


def test_it_refuses_a_key_without_a_name(acme):
    response = api_client(acme.owner, acme.tenant, "session").post(URL, {}, "application/json")

    assert set(error_of(response, 400)["fields"]) == {"name"}


@VIA
def test_it_revokes_the_callers_key(acme, via):
    client = api_client(acme.admin, acme.tenant, via)
    issued = services.api_key_create(actor=SYSTEM, tenant=acme.tenant, user=acme.admin, name="old script")

    response = client.delete(f"{URL}{issued.api_key.pk}/")

    assert response.status_code == 204
    issued.api_key.refresh_from_db()
    assert issued.api_key.revoked_at is not None
    event = AuditEvent.objects.get(action="apikey.revoked")
    assert (event.tenant, event.actor, event.target_id) == (acme.tenant, acme.admin, str(issued.api_key.pk))
    assert error_of(bearer(issued.raw_key).get("/api/v1/me/"), 401)["code"] == "not_authenticated"


def test_it_lets_a_key_revoke_itself(acme):
    raw = api_key(acme.owner, acme.tenant)
    key = ApiKey.objects.get(user=acme.owner)

    assert bearer(raw).delete(f"{URL}{key.pk}/").status_code == 204

    assert error_of(bearer(raw).get(URL), 401)["code"] == "not_authenticated"


@VIA
def test_it_does_not_find_another_persons_key(acme, globex, via):
    client = api_client(acme.owner, acme.tenant, via)
    colleagues = services.api_key_create(actor=SYSTEM, tenant=acme.tenant, user=acme.admin, name="admin's").api_key
    foreign = services.api_key_create(actor=SYSTEM, tenant=globex.tenant, user=globex.owner, name="globex").api_key

    for key in (colleagues, foreign):
        assert error_of(client.delete(f"{URL}{key.pk}/"), 404)["code"] == "not_found"
        key.refresh_from_db()
        assert key.revoked_at is None
