"""/api/v1/me/: who the caller is, and where."""

from __future__ import annotations

from django.test import Client

from tenants.models import Membership
from tests.tenants.test_api import api_key, bearer, error_of


def test_it_shows_a_session_every_membership(acme, globex, as_user):
    Membership.objects.create(tenant=globex.tenant, user=acme.admin, role="auditor")

    response = as_user(acme.admin).get("/api/v1/me/")

    assert response.status_code == 200
    assert response.json() == {
        "username": "acme-admin",
        "memberships": [
            {"tenant_slug": "acme", "tenant_name": "Acme Corporation", "role": "admin"},
            {"tenant_slug": "globex", "tenant_name": "Globex Corporation", "role": "auditor"},
        ],
    }


def test_it_shows_a_key_only_its_own_tenant(acme, globex):
    Membership.objects.create(tenant=globex.tenant, user=acme.admin, role="auditor")

    response = bearer(api_key(acme.admin, globex.tenant)).get("/api/v1/me/")

    assert response.json() == {
        "username": "acme-admin",
        "memberships": [{"tenant_slug": "globex", "tenant_name": "Globex Corporation", "role": "auditor"}],
    }


def test_it_shows_an_outsider_no_tenants(outsider, as_user):
    assert as_user(outsider).get("/api/v1/me/").json() == {"username": "outsider", "memberships": []}


def test_it_refuses_anonymous_people(db):
    assert error_of(Client().get("/api/v1/me/"), 401)["code"] == "not_authenticated"
