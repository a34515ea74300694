"""The transparency pages (platform staff, tenant admins) and the service's billing pages."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import date

import pytest
from django.test import Client

from licensing import selectors, services, views
from licensing.models import RegisteredPortal, UsageReport
from tests.licensing.conftest import signed_post

pytestmark = pytest.mark.django_db

REPORTS = "/licensing/v1/reports/"


def _report(period: date) -> UsageReport:
    return services.usage_report_create(period=period)[0]


def _deliver(licence, report: UsageReport) -> dict:
    """Send a report to the service through its endpoint and record the receipt, as delivery does."""
    response = signed_post(
        Client(),
        REPORTS,
        selectors.usage_report_json(report=report),
        serial=licence.serial,
        key=licence.licence_key,
        idempotency_key=str(report.idempotency_key),
        gzip_body=True,
    )
    assert response.status_code == 201, response.content
    return response.json()


# --- Platform staff: every report as sent ---------------------------------------------------


def test_it_shows_platform_staff_each_report_exactly_as_sent(small_fleet, licence, staff, as_user):
    older = _report(date(2026, 11, 1))
    newer = _report(date(2026, 11, 2))
    client = as_user(staff)

    response = client.get("/platform/usage-reports/")

    assert response.status_code == 200
    assert response.context["selected"] == newer
    assert json.loads(response.context["pretty"]) == json.loads(selectors.usage_report_json(report=newer))
    assert licence.serial in response.content.decode()
    picked = client.get(f"/platform/usage-reports/?report={older.pk}")
    assert picked.context["selected"] == older
    raw = client.get(f"/platform/usage-reports/raw/?report={older.pk}")
    assert raw["Content-Type"] == "application/json"
    assert raw.content == selectors.usage_report_json(report=older)
    assert client.get("/platform/usage-reports/?report=999999").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_it_shows_the_delivery_attempts_and_the_receipt(small_fleet, licence, staff, service, settings):
    report = _report(date(2026, 11, 1))
    settings.LICENSING_SERVICE_URL = "http://127.0.0.1:9/licensing/"
    with pytest.raises(services.DeliveryFailed):
        services.outbox_deliver_pending()
    settings.LICENSING_SERVICE_URL = service.url + "/licensing/"
    services.outbox_deliver_pending(force=True)
    client = Client()
    client.force_login(staff)

    response = client.get(f"/platform/usage-reports/?report={report.pk}")

    attempts = list(response.context["attempts"])
    assert [attempt.outcome for attempt in attempts] == ["unreachable", "delivered"]
    report.refresh_from_db()
    assert json.loads(response.context["receipt"]) == report.receipt
    body = response.content.decode()
    assert "Service unreachable" in body and report.receipt["receipt_id"] in body


def test_it_leaves_a_large_report_to_the_download(small_fleet, licence, staff, as_user, monkeypatch):
    monkeypatch.setattr(views, "PRETTY_PRINT_LIMIT", 10)
    _report(date(2026, 11, 1))

    response = as_user(staff).get("/platform/usage-reports/")

    assert "pretty" not in response.context and "download its JSON" in response.content.decode()


def test_it_lists_many_reports_in_a_few_queries(small_fleet, licence, staff, as_user, django_assert_max_num_queries):
    for day in range(1, 31):
        _report(date(2026, 10, day))
    client = as_user(staff)
    client.get("/platform/usage-reports/")

    with django_assert_max_num_queries(12):
        response = client.get("/platform/usage-reports/")

    assert len(response.context["reports"]) == 30


def test_it_builds_a_report_when_staff_ask(small_fleet, licence, staff, as_user):
    response = as_user(staff).post("/platform/usage-reports/run/")

    assert response.status_code == 302
    assert UsageReport.objects.count() == 1


def test_it_hides_the_platform_pages_from_everyone_but_staff(small_fleet, licence, acme, outsider, as_user):
    report = _report(date(2026, 11, 1))
    for user in (acme.owner, outsider):
        for url in (
            "/platform/usage-reports/",
            f"/platform/usage-reports/raw/?report={report.pk}",
            "/platform/billing/",
        ):
            assert as_user(user).get(url).status_code == 404, (user, url)
    assert Client().get("/platform/usage-reports/").status_code == 302


# --- Tenant admins: their tenant's part --------------------------------------------------------


def test_it_shows_a_tenant_admin_only_the_part_about_their_tenant(small_fleet, licence, acme, globex, as_user):
    _report(date(2026, 11, 1))

    acme_page = as_user(acme.owner).get("/t/acme/usage/")
    globex_page = as_user(globex.auditor).get("/t/globex/usage/")

    acme_part = json.loads(acme_page.context["part"])
    assert acme_part["backup_accounts"] == ["alice", "bob"]
    assert {device["name"] for device in acme_part["devices"]} == {"alice-laptop", "alice-desktop", "bob-nas"}
    assert b"carol" not in acme_page.content and b"globex" not in acme_page.content
    assert json.loads(globex_page.context["part"])["backup_accounts"] == ["carol"]
    assert b"alice" not in globex_page.content


def test_it_shows_a_tenant_the_bytes_sent_about_it(small_fleet, licence, acme, as_user):
    report = _report(date(2026, 11, 1))
    sent = json.loads(selectors.usage_report_json(report=report))

    page = as_user(acme.admin).get(f"/t/acme/usage/?report={report.pk}")

    assert json.loads(page.context["part"]) == sent["tenants"][report.tenant_ids.index(acme.tenant.pk)]


def test_it_says_when_a_report_predates_the_tenant(acme, licence, as_user):
    report = _report(date(2026, 11, 1))
    UsageReport.objects.filter(pk=report.pk).update(tenant_ids=[], tenant_spans=[])

    page = as_user(acme.owner).get("/t/acme/usage/")

    assert page.status_code == 200 and page.context["part"] is None
    assert "built before" in page.content.decode()


def test_it_shows_the_tenant_page_before_any_report(acme, as_user):
    page = as_user(acme.owner).get("/t/acme/usage/")

    assert page.status_code == 200 and "No usage report has been built yet" in page.content.decode()


def test_it_keeps_the_tenant_page_for_roles_that_read_the_audit_log(acme, licence, as_user):
    _report(date(2026, 11, 1))
    for role, status in (("owner", 200), ("admin", 200), ("auditor", 200), ("technician", 403)):
        assert as_user(acme.member(role)).get("/t/acme/usage/").status_code == status, role
    assert as_user(acme.owner).post("/t/acme/usage/").status_code == 403


# --- Roles -----------------------------------------------------------------------------------


def test_it_offers_only_the_pages_of_this_installations_role(acme, licence, staff, as_user, settings):
    settings.LICENSING_ROLE = "service"
    assert as_user(staff).get("/platform/usage-reports/").status_code == 404
    assert as_user(acme.owner).get("/t/acme/usage/").status_code == 404
    assert as_user(staff).get("/platform/billing/").status_code == 200
    assert b"Usage reports" not in as_user(staff).get("/platform/").content

    settings.LICENSING_ROLE = "portal"
    assert as_user(staff).get("/platform/billing/").status_code == 404
    assert as_user(staff).get("/platform/usage-reports/").status_code == 200
    assert b">Billing<" not in as_user(staff).get("/platform/").content


# --- The service's billing pages ---------------------------------------------------------------


@pytest.fixture
def billed(small_fleet, licence):
    """Three periods delivered to the service; the newest after carol dropped her hyperv item."""
    for day in (1, 2):
        _deliver(licence, _report(date(2026, 11, day)))
    small_fleet["carol"].devices.get().protected_items.filter(engine="hyperv").delete()
    _deliver(licence, _report(date(2026, 11, 3)))
    return RegisteredPortal.objects.get(serial=licence.serial)


def test_it_bills_a_portal_by_devices_with_protected_items_and_boosters(billed, staff, as_user):
    page = as_user(staff).get(f"/platform/billing/?portal={billed.serial}")

    assert page.status_code == 200
    assert page.context["report"].period == date(2026, 11, 3)
    assert page.context["report"].devices_with_protected_items == 3
    assert dict(page.context["boosters"]) == {
        "files": 3,
        "disk_image": 0,
        "mssql": 1,
        "mysql": 0,
        "exchange": 0,
        "hyperv": 0,
        "vmware": 1,
        "office365": 0,
        "program_output": 0,
    }
    assert page.context["accounts"] == ["alice", "bob", "carol"]
    assert "acme-owner" in page.context["admins"] and "globex-technician" in page.context["admins"]
    body = page.content.decode()
    assert body.count("<rect ") == 3 and 'data-testid="trend-chart"' in body
    assert page.context["portal"].last_seen_ip == "127.0.0.1"
    older = as_user(staff).get(f"/platform/billing/?portal={billed.serial}&period=2026-11-01")
    assert dict(older.context["boosters"])["hyperv"] == 1


def test_it_exports_the_billing_figures_and_a_periods_devices_as_csv(billed, staff, as_user):
    client = as_user(staff)

    trend = client.get(f"/platform/billing/export.csv?portal={billed.serial}")
    devices = client.get(f"/platform/billing/export.csv?portal={billed.serial}&period=2026-11-03")

    rows = list(csv.DictReader(io.StringIO(b"".join(trend.streaming_content).decode())))
    assert [row["period"] for row in rows] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert [row["booster_hyperv"] for row in rows] == ["1", "1", "0"]
    assert rows[-1]["devices_with_protected_items"] == "3" and rows[-1]["portal_ip"] == "127.0.0.1"
    lines = list(csv.DictReader(io.StringIO(b"".join(devices.streaming_content).decode())))
    assert {line["device"]: line["boosters"] for line in lines} == {
        "alice-desktop": "files",
        "alice-laptop": "files mssql",
        "bob-nas": "",
        "carol-server": "files vmware",
    }
    assert client.get(f"/platform/billing/export.csv?portal={billed.serial}&period=2020-01-01").status_code == 404
    assert client.get("/platform/billing/export.csv?portal=nope").status_code == 404


def test_it_lists_portals_and_registers_a_new_one_showing_its_key_once(billed, staff, as_user):
    client = as_user(staff)
    listing = client.get("/platform/billing/")
    assert billed.serial in listing.content.decode()

    response = client.post("/platform/billing/register/", {"name": "Reseller Portal Two"})

    portal = RegisteredPortal.objects.get(name="Reseller Portal Two")
    body = response.content.decode()
    assert response.status_code == 200 and portal.serial in body and portal.licence_key in body
    assert portal.licence_key not in client.get("/platform/billing/").content.decode()
    assert client.post("/platform/billing/register/", {"name": ""}).status_code == 400


def test_it_shows_an_empty_billing_page_for_a_portal_without_reports(licence, staff, as_user):
    page = as_user(staff).get(f"/platform/billing/?portal={licence.serial}")

    assert page.status_code == 200 and page.context["report"] is None
    assert re.search(r"No report received yet", page.content.decode())
