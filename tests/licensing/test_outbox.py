"""The outbox: reports are stored before they are sent, one per period, and delivered exactly once
and in order however long the service is away.

The service is real (the licensing endpoints under a live server); a ServiceFront on 127.0.0.1
stands before it and refuses connections, answers 500, or answers only after the portal has
given up, as an outage would.
"""

from __future__ import annotations

import itertools
import threading
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta

import pytest
from celery.exceptions import Retry
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from licensing import payload as payload_format
from licensing import selectors, services
from licensing.models import DeliveryAttempt, ReceivedReport, RegisteredPortal, UsageReport
from licensing.tasks import send_usage_reports
from portal.celery import app as celery_app

START = datetime(2026, 11, 1, 0, 10, tzinfo=UTC)


def pending_head() -> UsageReport:
    return UsageReport.objects.filter(status=UsageReport.Status.PENDING).order_by("period").first()


@pytest.mark.django_db(transaction=True)
def test_it_delivers_every_report_exactly_once_and_in_order_after_days_of_outage(
    small_fleet, licence, front, time_machine
):
    outages = itertools.cycle(["refuse", "error", "slow"])
    days = 12
    for day in range(days):
        time_machine.move_to(START + timedelta(days=day))
        report, created = services.usage_report_create()
        assert created and report.period == (START + timedelta(days=day - 1)).date()
        # Stored, whole, before anything is sent.
        stored = UsageReport.objects.get(pk=report.pk)
        assert stored.status == UsageReport.Status.PENDING
        assert payload_format.parse(selectors.usage_report_json(report=stored))["portal"]["period"] == str(
            report.period
        )
        front.set(next(outages))
        with pytest.raises(services.DeliveryFailed):
            services.outbox_deliver_pending(force=True)

    assert UsageReport.objects.filter(status=UsageReport.Status.PENDING).count() == days
    head = pending_head()
    outcomes = list(head.attempts.values_list("outcome", flat=True))
    assert set(outcomes) == {"unreachable", "server_error", "timeout"} and len(outcomes) == days
    # During the outage only the oldest report was tried: later ones wait behind it.
    assert not DeliveryAttempt.objects.exclude(report=head).exists()
    # A "slow" answer came after the portal gave up, but the service had stored the report.
    assert list(ReceivedReport.objects.values_list("period", flat=True)) == [head.period]

    front.set("up")
    time_machine.move_to(head.next_attempt_at + timedelta(seconds=1))
    run = services.outbox_deliver_pending()

    assert (run.state, run.delivered) == ("idle", days)
    received = list(ReceivedReport.objects.order_by("id"))
    reports = list(UsageReport.objects.order_by("period"))
    assert [row.period for row in received] == [row.period for row in reports]
    assert [row.idempotency_key for row in received] == [row.idempotency_key for row in reports]
    assert all(report.status == UsageReport.Status.DELIVERED for report in reports)
    assert all(report.receipt["receipt_id"] == str(row.receipt_id) for report, row in zip(reports, received))
    # The report the service had already was answered as a repeat, not stored twice.
    assert reports[0].attempts.last().outcome == DeliveryAttempt.Outcome.DUPLICATE
    assert {attempt.outcome for report in reports[1:] for attempt in report.attempts.all()} == {"delivered"}
    assert RegisteredPortal.objects.get(serial=licence.serial).last_seen_ip == "127.0.0.1"


@pytest.mark.django_db(transaction=True)
def test_it_waits_for_the_scheduled_retry_and_backs_off(small_fleet, licence, front, time_machine):
    time_machine.move_to(START)
    services.usage_report_create()
    front.set("error")
    # Full jitter may draw 0 s, which is due at once: draw again until the next try is later.
    delays = []
    for _ in range(6):
        with pytest.raises(services.DeliveryFailed) as failed:
            services.outbox_deliver_pending(force=True)
        delays.append(failed.value.retry_in)
    head = pending_head()
    assert head.failed_attempts == 6
    expected = timezone.now() + timedelta(seconds=delays[-1])
    assert abs((head.next_attempt_at - expected).total_seconds()) < 5
    assert all(0 <= delay <= 30 * 2**attempt for attempt, delay in enumerate(delays))
    requests = front.requests

    # Not yet due: nothing is sent, and the run says when it will be.
    run = services.outbox_deliver_pending()

    assert run.state == "not_due" and run.next_attempt_at == head.next_attempt_at
    assert front.requests == requests


def test_it_backs_off_exponentially_with_full_jitter():
    for failures in range(1, 12):
        ceiling = min(3600, 30 * 2 ** (failures - 1))
        samples = [services.backoff_seconds(failures) for _ in range(200)]
        assert all(0 <= sample <= ceiling for sample in samples)
        assert max(samples) > ceiling / 2  # spread over the range, not a fixed delay
    assert max(services.backoff_seconds(40) for _ in range(200)) <= 3600


@pytest.mark.django_db
def test_it_keeps_one_report_per_period_even_when_asked_twice(small_fleet, licence):
    first, created = services.usage_report_create()
    again, created_again = services.usage_report_create()

    assert (created, created_again) == (True, False)
    assert first.pk == again.pk and UsageReport.objects.count() == 1
    with pytest.raises(IntegrityError), transaction.atomic():
        UsageReport.objects.create(
            serial=first.serial, period=first.period, generated_at=timezone.now(), body=b"", sha256="", size_bytes=0
        )


@pytest.mark.django_db(transaction=True)
def test_it_stores_one_report_when_two_builders_race(small_fleet, licence, monkeypatch):
    """Two beats at once: both pass the "exists?" check and build; the constraint lets one store."""
    if connection.vendor == "sqlite":
        pytest.skip("the in-memory SQLite test database is one connection shared by every thread")
    barrier = threading.Barrier(2, timeout=20)
    real_build = services.usage_report_build

    def build_in_step(**arguments):
        built = real_build(**arguments)
        barrier.wait()
        return built

    monkeypatch.setattr(services, "usage_report_build", build_in_step)
    results: list[tuple[int, bool]] = []

    def builder() -> None:
        report, created = services.usage_report_create(period=date(2026, 11, 30))
        results.append((report.pk, created))
        connection.close()

    threads = [threading.Thread(target=builder) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(created for _, created in results) == [False, True]
    assert len({pk for pk, _ in results}) == 1
    assert UsageReport.objects.count() == 1


@pytest.mark.django_db
def test_it_lets_one_sender_at_a_time_hold_a_report(small_fleet, licence, time_machine):
    time_machine.move_to(START)
    report, _ = services.usage_report_create()
    assert services._claim(report, timezone.now())

    assert services.outbox_deliver_pending(force=True).state == "busy"
    assert not DeliveryAttempt.objects.exists()

    # A sender that died loses its claim when the lease ends.
    time_machine.move_to(START + timedelta(minutes=5))
    assert services._claim(report, timezone.now())


@pytest.mark.django_db(transaction=True)
def test_it_sets_aside_a_report_the_service_will_never_take_and_sends_the_next(small_fleet, licence, service):
    older, _ = services.usage_report_create(period=date(2026, 11, 1))
    newer, _ = services.usage_report_create(period=date(2026, 11, 2))
    # The service holds another report for the older period (say the portal was restored from a backup).
    portal = RegisteredPortal.objects.get(serial=licence.serial)
    ReceivedReport.objects.create(
        portal=portal,
        idempotency_key="00000000-0000-4000-8000-000000000001",
        period=older.period,
        generated_at=timezone.now(),
        received_at=timezone.now(),
        body=b"",
        sha256="",
    )

    run = services.outbox_deliver_pending()

    older.refresh_from_db()
    newer.refresh_from_db()
    assert run.delivered == 1
    assert older.status == UsageReport.Status.REJECTED and older.receipt["error"] == "period_taken"
    assert newer.status == UsageReport.Status.DELIVERED


@pytest.mark.django_db(transaction=True)
def test_it_keeps_trying_when_the_service_refuses_the_signature(small_fleet, licence, service):
    RegisteredPortal.objects.filter(serial=licence.serial).update(licence_key="rotated-on-the-service-side-0000")
    services.usage_report_create()

    with pytest.raises(services.DeliveryFailed):
        services.outbox_deliver_pending()

    head = pending_head()
    assert head.status == UsageReport.Status.PENDING and head.next_attempt_at is not None
    assert head.attempts.get().detail.startswith("bad_signature")


@contextmanager
def celery_runs_tasks_inline():
    celery_app.conf.task_always_eager = True
    try:
        yield
    finally:
        celery_app.conf.task_always_eager = False


@pytest.mark.django_db(transaction=True)
def test_it_sweeps_up_a_report_whose_retry_was_lost(small_fleet, licence, service, time_machine):
    time_machine.move_to(START)
    report, _ = services.usage_report_create()
    # The worker that held the retry died: the row says a try was due an hour ago, and nothing came.
    UsageReport.objects.filter(pk=report.pk).update(next_attempt_at=START - timedelta(hours=1), failed_attempts=3)
    with celery_runs_tasks_inline():
        assert services.outbox_sweep()

    report.refresh_from_db()
    assert report.status == UsageReport.Status.DELIVERED
    assert ReceivedReport.objects.get().idempotency_key == report.idempotency_key
    assert not services.outbox_sweep()


@pytest.mark.django_db
def test_it_does_not_sweep_a_report_whose_retry_is_still_scheduled(small_fleet, licence, time_machine):
    time_machine.move_to(START)
    report, _ = services.usage_report_create()
    UsageReport.objects.filter(pk=report.pk).update(next_attempt_at=START + timedelta(minutes=10))

    assert not services.outbox_sweep()
    time_machine.move_to(START + timedelta(minutes=13))
    # Overdue now, but a sender holds it.
    UsageReport.objects.filter(pk=report.pk).update(lease_until=START + timedelta(minutes=14))
    assert not services.outbox_sweep()


@pytest.mark.django_db
def test_it_retries_the_send_task_after_the_rows_backoff(small_fleet, licence, settings):
    settings.LICENSING_SERVICE_URL = "http://127.0.0.1:9/licensing/"  # the discard port: refused
    services.usage_report_create()
    send_usage_reports.push_request(called_directly=False, is_eager=True, retries=0, id="test")
    try:
        with pytest.raises(Retry) as retried:
            send_usage_reports.run()
    finally:
        send_usage_reports.pop_request()

    head = pending_head()
    assert head.failed_attempts == 1
    assert 0 <= retried.value.when <= 30
    assert abs((head.next_attempt_at - timezone.now()).total_seconds() - retried.value.when) < 5
    assert isinstance(retried.value.exc, services.DeliveryFailed)
