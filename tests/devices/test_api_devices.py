"""/api/v1/t/<slug>/devices/: the fleet, filtered and paged without counting; one device; revoking it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices.models import Device, ProtectedItem
from tenants.models import AuditEvent
from tests.devices.test_api import API, make_account, make_device, make_devices
from tests.tenants.test_api import VIA, api_client, error_of

URL = f"{API}/devices/"


def _ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return [device["id"] for device in response.json()["results"]]


@VIA
def test_it_lists_the_tenants_devices(acme, globex, via):
    account = make_account(acme, "alice")
    seen = timezone.now() - timedelta(minutes=5)
    laptop = make_device(
        account, 1, name="laptop", os="Linux 6.1", arch="x86_64", client_version="1.2.0", public_ip="2001:db8::7"
    )
    Device.objects.filter(pk=laptop.pk).update(last_seen_at=seen, is_live=True)
    make_device(account, 2, name="desktop")
    make_device(make_account(globex, "gina"), 3, name="globex-host")

    response = api_client(acme.auditor, acme.tenant, via).get(URL)

    assert _ids(response) == [Device.objects.get(name="desktop").pk, laptop.pk]
    body = response.json()
    assert set(body) == {"next", "previous", "results"}
    assert body["results"][1] == {
        "id": laptop.pk,
        "device_id": "device-000001",
        "name": "laptop",
        "account": account.pk,
        "account_username": "alice",
        "os": "Linux 6.1",
        "arch": "x86_64",
        "client_version": "1.2.0",
        "timezone": "",
        "public_ip": "2001:db8::7",
        "is_live": True,
        "last_seen_at": seen.isoformat().replace("+00:00", "Z"),
        "has_failing_jobs": False,
        "registered_at": laptop.registered_at.isoformat().replace("+00:00", "Z"),
        "revoked_at": None,
    }


def test_it_filters_and_sorts_devices_as_the_devices_page_does(acme):
    alice, bob = make_account(acme, "alice"), make_account(acme, "bob")
    make_devices(alice, 6)  # host-000000..5: Linux when even, live when even, failing when 0 or 5
    make_devices(bob, 2, start=6)
    client = api_client(acme.owner, acme.tenant, "api_key")
    pk = {device.name: device.pk for device in Device.objects.all()}

    def names(**query) -> list[str]:
        by_pk = {value: key for key, value in pk.items()}
        return [by_pk[device_pk] for device_pk in _ids(client.get(URL, query))]

    assert names(account=bob.pk) == ["host-000006", "host-000007"]
    assert names(search="BOB") == ["host-000006", "host-000007"]
    assert names(search="000003") == ["host-000003"]
    assert names(live="true", account=alice.pk) == ["host-000000", "host-000002", "host-000004"]
    assert names(live="false", os="Linux") == []
    assert names(failing="yes") == ["host-000000", "host-000005"]
    assert names(failing="false", client_version="1.2.0", os="Windows") == []
    assert names(client_version="1.2.0") == ["host-000002", "host-000005"]
    assert names(sort="-name")[:2] == ["host-000007", "host-000006"]
    assert names(sort="version")[:3] == ["host-000000", "host-000003", "host-000006"]


def test_it_refuses_filters_it_does_not_know(acme):
    client = api_client(acme.owner, acme.tenant, "api_key")

    error = error_of(client.get(URL, {"sort": "password", "live": "maybe", "account": "0"}), 400)

    assert set(error["fields"]) == {"sort", "live", "account"}


def test_it_pages_devices_without_counting_them(acme):
    make_devices(make_account(acme, "alice"), 120)
    client = api_client(acme.owner, acme.tenant, "api_key")

    with CaptureQueriesContext(connection) as queries:
        first = client.get(URL, {"os": "Linux", "page_size": 25}).json()
    second = client.get(first["next"]).json()
    last = client.get(URL, {"os": "Linux", "page_size": 25, "page": 3}).json()

    assert "COUNT(" not in " ".join(query["sql"].upper() for query in queries.captured_queries)
    assert "count" not in first
    assert [len(page["results"]) for page in (first, second, last)] == [25, 25, 10]
    assert first["previous"] is None and "page=2" in first["next"] and "page_size=25" in first["next"]
    assert "page=" not in second["previous"] and "os=Linux" in second["previous"]
    assert last["next"] is None
    assert first["results"][0]["name"] == "host-000000" and second["results"][0]["name"] == "host-000050"
    assert client.get(URL, {"page_size": 1000}).json()["next"].endswith("page=2&page_size=1000")
    assert len(client.get(URL, {"page_size": 1000}).json()["results"]) == 100
    for page in ("4", "0", "-1", "two", "1000001"):
        response = client.get(URL, {"os": "Linux", "page_size": 25, "page": page})
        assert error_of(response, 404)["code"] == "not_found", page
    assert client.get(f"{API}/devices/", {"search": "nothing-matches"}).json() == {
        "next": None,
        "previous": None,
        "results": [],
    }


@pytest.mark.parametrize("query", ["", "?sort=-last_seen&live=true", "?search=HOST-00&failing=no&page=2&page_size=3"])
def test_it_lists_10_or_100_devices_with_the_same_queries(acme, django_assert_max_num_queries, query):
    accounts = [make_account(acme, f"user{number}") for number in range(2)]
    for number, account in enumerate(accounts):
        make_devices(account, 5, start=number * 5)
    client = api_client(acme.auditor, acme.tenant, "api_key")
    client.get(URL + query)  # the first request of a key notes that it was used
    with django_assert_max_num_queries(8) as ten:
        assert client.get(URL + query).json()["results"]

    for number, account in enumerate(accounts):
        make_devices(account, 45, start=1000 + number * 45)
    assert Device.objects.count() == 100

    with django_assert_max_num_queries(len(ten.captured_queries)) as hundred:
        response = client.get(URL + query)
    assert len(hundred.captured_queries) == len(ten.captured_queries)
    assert response.status_code == 200 and response.json()["results"]


@VIA
def test_it_shows_a_device_with_its_protected_items_and_consents(acme, via):
    account = make_account(acme, "alice")
    device = make_device(account, name="laptop", timezone="Europe/Paris", consents={"allow_browse": True})
    ProtectedItem.objects.create(
        tenant=acme.tenant, device=device, item_id="db", name="Orders", engine="mysql", size_bytes=7
    )
    ProtectedItem.objects.create(tenant=acme.tenant, device=device, item_id="docs", name="Documents", engine="files")

    response = api_client(acme.technician, acme.tenant, via).get(f"{URL}{device.pk}/")

    assert response.status_code == 200
    body = response.json()
    assert (body["name"], body["account_username"], body["timezone"]) == ("laptop", "alice", "Europe/Paris")
    assert body["consents"] == {"allow_browse": True}
    assert body["protected_items"] == [
        {"item_id": "docs", "name": "Documents", "engine": "files", "size_bytes": 0},
        {"item_id": "db", "name": "Orders", "engine": "mysql", "size_bytes": 7},
    ]


@VIA
def test_it_revokes_a_device(acme, via):
    device = make_device(make_account(acme, "alice"), name="stolen-laptop")
    client = api_client(acme.admin, acme.tenant, via)

    response = client.delete(f"{URL}{device.pk}/")

    assert response.status_code == 204 and response.content == b""
    device.refresh_from_db()
    assert device.revoked_at is not None
    event = AuditEvent.objects.get(action="device.revoked")
    assert (event.actor, event.target_id, event.before) == (acme.admin, str(device.pk), {"name": "stolen-laptop"})
    assert client.get(f"{URL}{device.pk}/").json()["revoked_at"] is not None

    assert client.delete(f"{URL}{device.pk}/").status_code == 204
    assert AuditEvent.objects.filter(action="device.revoked").count() == 1


def test_it_lets_only_device_managers_revoke(acme):
    device = make_device(make_account(acme, "alice"))

    response = api_client(acme.technician, acme.tenant, "api_key").delete(f"{URL}{device.pk}/")

    assert error_of(response, 403)["code"] == "permission_denied"
    device.refresh_from_db()
    assert device.revoked_at is None
