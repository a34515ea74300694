"""Keyset paging (portal/keyset.py): following cursors through a list yields exactly the list, in
every sort of the device list, NULLs and ties included; the pages and the API hand out the cursors."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from devices import selectors
from devices.models import Device
from portal import keyset
from tests.devices.test_device_list_queries import _seed

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet(account):
    """37 devices with repeated names, OS and versions, and last-seen times with ties and NULLs."""
    _seed(account, 37)
    now = timezone.now()
    for number, device in enumerate(Device.objects.order_by("id")):
        device.name = f"host-{number % 9}"  # ties: the id decides
        device.last_seen_at = None if number % 5 == 0 else now - timedelta(minutes=number % 4)
        device.save(update_fields=["name", "last_seen_at"])
    return account


def _walk(queryset, size: int) -> list[int]:
    rows = keyset.page(queryset, limit=size)
    seen = [row.pk for row in rows]
    while len(rows) == size:
        rows = keyset.page(queryset, after=keyset.cursor_of(queryset, rows[-1]), limit=size)
        seen += [row.pk for row in rows]
    return seen


@pytest.mark.parametrize("sort", sorted(selectors.DEVICE_SORTS))
def test_following_cursors_forwards_and_back_yields_the_whole_list_in_order(fleet, sort):
    queryset = selectors.device_list(tenant=fleet.tenant, filters=selectors.DeviceFilters(sort=sort))
    everything = [row.pk for row in queryset]
    assert len(everything) == 37 and keyset.orderable(queryset)
    assert _walk(queryset, 5) == everything

    # Backwards from the last row, page by page, gives the same list.
    last = queryset[len(everything) - 1]
    backwards, cursor = [last.pk], keyset.cursor_of(queryset, last)
    while rows := keyset.page(queryset, before=cursor, limit=4):
        backwards = [row.pk for row in rows] + backwards
        cursor = keyset.cursor_of(queryset, rows[0])
    assert backwards == everything


def test_a_cursor_keeps_the_querysets_filters(fleet, acme, globex):
    queryset = selectors.device_list(tenant=fleet.tenant)
    cursor = keyset.cursor_of(queryset, queryset[0])
    other_tenant = selectors.device_list(tenant=globex.tenant)
    assert keyset.page(other_tenant, after=cursor, limit=10) == []


@pytest.mark.parametrize("token", ["not-base64!", "bnVsbA", "WzFd", "WyJ4IiwieCJd", "e30"])
def test_it_refuses_a_cursor_it_cannot_read(fleet, token):
    queryset = selectors.device_list(tenant=fleet.tenant)
    with pytest.raises(keyset.InvalidCursor):
        keyset.page(queryset, after=token, limit=10)


def test_a_list_whose_order_does_not_end_in_the_key_is_not_paged_by_cursor(fleet):
    assert not keyset.orderable(Device.objects.order_by("name"))
    with pytest.raises(keyset.InvalidCursor):
        keyset.page(Device.objects.order_by("name"), limit=10)


def test_the_device_pages_next_and_previous_links_carry_cursors(fleet, as_user, acme):
    _seed(fleet, 50, start=100)  # 87 devices: pages of 25
    client = as_user(acme.owner)
    base = "/t/acme/devices/?size=25&sort=-last_seen"
    queryset = selectors.device_list(tenant=fleet.tenant, filters=selectors.DeviceFilters(sort="-last_seen"))
    everything = list(queryset)

    def shows(response, devices) -> bool:
        body = response.content.decode()
        return all(f'data-testid="device-{device.device_id}"' in body for device in devices)

    first = client.get(base)
    assert shows(first, everything[:25])
    assert f"page=2&amp;after={keyset.cursor_of(queryset, everything[24])}" in first.content.decode()
    second = client.get(f"{base}&page=2&after={keyset.cursor_of(queryset, everything[24])}")
    third = client.get(f"{base}&page=3&after={keyset.cursor_of(queryset, everything[49])}")
    assert shows(second, everything[25:50]) and shows(third, everything[50:75])
    assert f"page=2&amp;before={keyset.cursor_of(queryset, everything[50])}" in third.content.decode()
    assert shows(client.get(f"{base}&page=2&before={keyset.cursor_of(queryset, everything[50])}"), everything[25:50])
    # Page 3 by number alone shows the same rows; an unreadable cursor falls back to the number.
    assert shows(client.get(f"{base}&page=3"), everything[50:75])
    assert shows(client.get(f"{base}&page=3&after=%25%25"), everything[50:75])


def test_the_api_links_carry_cursors_and_refuse_a_bad_one(fleet, as_user, acme):
    client = as_user(acme.owner)
    page = client.get("/api/v1/t/acme/devices/?page_size=10").json()
    seen = [row["device_id"] for row in page["results"]]
    while page["next"]:
        assert "after=" in page["next"]
        page = client.get(page["next"]).json()
        seen += [row["device_id"] for row in page["results"]]
    expected = [device.device_id for device in selectors.device_list(tenant=fleet.tenant)]
    assert seen == expected
    assert "before=" in page["previous"]
    back = client.get(page["previous"]).json()
    assert [row["device_id"] for row in back["results"]] == expected[20:30]
    assert client.get("/api/v1/t/acme/devices/?page=2&after=%%%").status_code == 404
