"""The device list costs the same number of queries for 30 devices as for 300: no per-row queries and
no count of the whole table."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices import services
from devices.models import Device
from tenants.audit import SYSTEM

pytestmark = pytest.mark.django_db

MAX_QUERIES = 10


def _seed(account, count: int, start: int = 0) -> None:
    Device.objects.bulk_create(
        [
            Device(
                tenant=account.tenant,
                account=account,
                device_id=f"device-{number:06d}",
                name=f"host-{number:06d}",
                os=("Linux", "Windows", "Mac OS")[number % 3],
                client_version=f"1.{number % 4}.0",
                is_live=number % 2 == 0,
                has_failing_jobs=number % 7 == 0,
                token_hash=f"{number:064x}",
            )
            for number in range(start, start + count)
        ],
        batch_size=500,
    )


def _queries_for(client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    # No query counts the devices (the staff-access badge counts pending requests: that one is small).
    counted = [query["sql"] for query in queries.captured_queries if "COUNT(" in query["sql"].upper()]
    assert not [sql for sql in counted if "devices_device" in sql], counted
    return len(queries.captured_queries)


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?sort=-last_seen&live=online",
        "?search=HOST-00001&failing=no",
        "?os=Linux&page=2",
        "?sort=version&page=2&size=25",
    ],
)
def test_it_lists_30_or_300_devices_with_the_same_bounded_number_of_queries(
    acme, as_user, django_assert_max_num_queries, query
):
    accounts = [
        services.account_create(actor=SYSTEM, tenant=acme.tenant, username=f"user{number}", password="password-1")
        for number in range(3)
    ]
    client = as_user(acme.auditor)
    url = "/t/acme/devices/" + query
    for account_number, account in enumerate(accounts):
        _seed(account, 10, start=account_number * 10)
    assert Device.objects.filter(tenant=acme.tenant).count() == 30
    client.get(url)  # the first request of a session may do one-time work
    with_30 = _queries_for(client, url)

    for account_number, account in enumerate(accounts):
        _seed(account, 90, start=1000 + account_number * 90)
    assert Device.objects.filter(tenant=acme.tenant).count() == 300
    with_300 = _queries_for(client, url)

    # A deep page reads ids first, then its rows: an empty page skips the second query.
    assert with_30 == with_300 or (with_30 + 1 == with_300 and "page=2" in query)
    with django_assert_max_num_queries(MAX_QUERIES):
        response = client.get(url)
    assert len(response.context["devices"]) > 0


@pytest.mark.skipif(connection.vendor != "postgresql", reason="trigram indexes exist on PostgreSQL only")
@pytest.mark.parametrize(
    ("index", "option"),
    [("account_username_trgm", "fastupdate=off"), ("device_name_trgm", "gin_pending_list_limit=256")],
)
def test_the_search_indexes_keep_little_or_no_pending_list_for_a_search_to_read(index, option):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.reloptions, a.amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam WHERE c.relname = %s",
            [index],
        )
        found = cursor.fetchone()
    if found is None:
        pytest.skip("pg_trgm was not available to the migration")
    options, method = found
    assert method == "gin"
    assert option in (options or [])
