"""The banner: shown on every page once the portal has gone unreported past the grace period."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from licensing import services
from licensing.models import UsageReport
from licensing.selectors import reporting_status

pytestmark = pytest.mark.django_db

BUILT = datetime(2026, 11, 2, 0, 5, tzinfo=UTC)
BANNER = b'data-testid="licensing-unreported-banner"'
PAGES = ["/t/acme/", "/t/acme/devices/", "/t/acme/team/", "/"]


def _built_at(when: datetime, *, delivered: bool) -> UsageReport:
    report, _ = services.usage_report_create(period=(when - timedelta(days=1)).date(), now=when)
    if delivered:
        UsageReport.objects.filter(pk=report.pk).update(status=UsageReport.Status.DELIVERED, delivered_at=when)
    return report


def test_it_shows_no_banner_while_reports_arrive(acme, licence, as_user, time_machine):
    _built_at(BUILT, delivered=True)
    time_machine.move_to(BUILT + timedelta(hours=71))

    for url in PAGES:
        assert BANNER not in as_user(acme.owner).get(url, follow=True).content, url


def test_it_shows_a_banner_on_every_page_when_unreported_past_the_grace_period(
    acme, licence, staff, as_user, time_machine
):
    _built_at(BUILT, delivered=True)
    for day in (1, 2, 3):
        _built_at(BUILT + timedelta(days=day), delivered=False)
    time_machine.move_to(BUILT + timedelta(hours=73))

    for url in PAGES:
        response = as_user(acme.owner).get(url, follow=True)
        # The portal keeps working: the page is there, with the banner on it.
        assert response.status_code == 200 and BANNER in response.content, url
    tenant_page = as_user(acme.owner).get("/t/acme/").content.decode()
    assert "3 reports wait to be sent" in tenant_page
    assert "See the usage reports" not in tenant_page
    assert "See the usage reports" in as_user(staff).get("/platform/").content.decode()


def test_it_shows_the_banner_when_beat_stopped_building_reports(acme, licence, as_user, time_machine):
    _built_at(BUILT, delivered=True)
    time_machine.move_to(BUILT + timedelta(days=4))

    assert BANNER in as_user(acme.owner).get("/t/acme/").content


def test_it_counts_from_the_first_report_when_none_was_ever_delivered(licence, time_machine):
    _built_at(BUILT, delivered=False)

    assert not reporting_status(now=BUILT + timedelta(hours=71)).overdue
    status = reporting_status(now=BUILT + timedelta(hours=73))
    assert status.overdue and status.last_delivered_at is None and status.since == BUILT


def test_it_shows_no_banner_before_the_first_report_or_to_anonymous_people(acme, client, as_user, settings):
    settings.LICENSING_GRACE_HOURS = 0

    assert reporting_status(now=timezone.now()).since is None
    assert BANNER not in as_user(acme.owner).get("/t/acme/").content
    assert BANNER not in client.get("/login/").content


def test_it_shows_no_banner_on_the_service_alone(acme, licence, as_user, settings, time_machine):
    _built_at(BUILT, delivered=False)
    time_machine.move_to(BUILT + timedelta(days=10))
    settings.LICENSING_ROLE = "service"

    assert BANNER not in as_user(acme.owner).get("/t/acme/").content
