from __future__ import annotations

from django.test import Client

from tenants.models import Membership
from tenants.roles import Role


def test_it_sends_anonymous_people_to_login(db):
    response = Client().get("/")
    assert response.status_code == 302 and response["Location"] == "/login/?next=/"


def test_it_sends_platform_staff_to_the_platform(staff, as_user):
    response = as_user(staff).get("/")
    assert response.status_code == 302 and response["Location"] == "/platform/"


def test_it_sends_a_member_of_one_tenant_to_its_dashboard(acme, as_user):
    response = as_user(acme.auditor).get("/")
    assert response.status_code == 302 and response["Location"] == "/t/acme/"


def test_it_lists_the_tenants_of_a_member_of_several(acme, globex, as_user):
    Membership.objects.create(tenant=globex.tenant, user=acme.owner, role=Role.TECHNICIAN)
    response = as_user(acme.owner).get("/")
    assert response.status_code == 200
    assert b'href="/t/acme/"' in response.content and b'href="/t/globex/"' in response.content
    assert b"Technician" in response.content


def test_it_tells_someone_without_a_tenant(acme, outsider, as_user):
    response = as_user(outsider).get("/")
    assert response.status_code == 200
    assert b"do not belong to any tenant yet" in response.content
    assert b"Acme" not in response.content
