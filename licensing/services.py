"""Writes of the portal side: the licence, building a report into the outbox, and delivering it.

The outbox: a report is stored (UsageReport) before anything is sent, with an idempotency key of
its own. Delivery takes the oldest unsent report of this portal, claims it with a short lease (so
two senders never send at once), sends it signed, and records the attempt. A failure leaves the
report where it is and schedules the next try with exponential backoff and full jitter; later
reports wait behind it, so the service receives them in order. The service deduplicates by key,
so a report whose answer was lost is sent again without being billed twice.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from celery.utils.time import get_exponential_backoff_interval
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from licensing import client, conf
from licensing.client import LicensingNotConfigured, ServiceRefused, ServiceUnreachable
from licensing.models import DeliveryAttempt, PortalLicence, UsageReport
from licensing.selectors import period_last_closed, usage_report_build
from tenants.audit import SYSTEM, audit_record

logger = logging.getLogger(__name__)

# Codes with which the service says it will never take a report as it is (see licensing.api).
FINAL_REFUSALS = frozenset({"period_taken", "invalid_report", "too_large"})


# --- The licence ----------------------------------------------------------------------------


def _new_serial() -> str:
    return "portal-" + uuid.uuid4().hex[:16]


def licence_current() -> PortalLicence | None:
    """Return this portal's licence. In the "both" role one is made, and registered with the local
    service, the first time it is needed; in the "portal" role an operator configures it."""
    licence = PortalLicence.objects.first()
    if licence is not None or conf.role() != conf.BOTH:
        return licence
    from licensing.services_receiver import portal_register

    try:
        with transaction.atomic():
            licence = PortalLicence.objects.create(serial=_new_serial(), licence_key=secrets.token_urlsafe(32))
            portal_register(
                actor=SYSTEM, name="This portal (embedded)", serial=licence.serial, licence_key=licence.licence_key
            )
    except IntegrityError:  # another process made it first
        return PortalLicence.objects.first()
    return licence


@transaction.atomic
def licence_configure(*, serial: str, licence_key: str) -> PortalLicence:
    """Set the serial and key the licensing service issued for this portal."""
    licence = PortalLicence.objects.select_for_update().first()
    if licence is None:
        licence = PortalLicence.objects.create(serial=serial, licence_key=licence_key)
    else:
        licence.serial, licence.licence_key = serial, licence_key
        licence.save(update_fields=["serial", "licence_key"])
    audit_record(actor=SYSTEM, tenant=None, action="licensing.licence_configured", after={"serial": serial})
    return licence


def _require_licence() -> PortalLicence:
    licence = licence_current()
    if licence is None:
        raise LicensingNotConfigured("No licence: run manage.py licensing_configure with the service's serial and key.")
    return licence


# --- Building into the outbox ---------------------------------------------------------------


def send_enqueue(*, force: bool = False) -> None:
    """Ask a worker to deliver what waits in the outbox (best effort: the sweeper asks again)."""
    from licensing.tasks import send_usage_reports

    try:
        send_usage_reports.delay(force=force)
    except Exception as error:  # the sweeper enqueues it again; the report is stored either way
        logger.warning("Could not enqueue the usage report sender: %s", error)


def usage_report_create(*, period: date | None = None, now: datetime | None = None) -> tuple[UsageReport, bool]:
    """Build and store the report for `period` (the last closed day by default) unless it exists.

    Return the report and whether this call made it. Two callers at once both build, and the unique
    constraint on (serial, period) lets exactly one of them store its report.
    """
    licence = _require_licence()
    now = now or timezone.now()
    period = period or period_last_closed(now=now)
    # Beat asks every few minutes: answer from the row, without reading its body.
    existing = UsageReport.objects.defer("body").filter(serial=licence.serial, period=period).first()
    if existing is not None:
        return existing, False
    built = usage_report_build(serial=licence.serial, period=period, now=now)
    try:
        with transaction.atomic():
            report = UsageReport.objects.create(
                serial=licence.serial,
                period=period,
                generated_at=built.generated_at,
                body=built.serialised.body,
                sha256=built.serialised.sha256,
                size_bytes=built.serialised.size,
                tenant_ids=built.tenant_ids,
                tenant_spans=[list(span) for span in built.serialised.spans],
                device_count=built.device_count,
            )
            audit_record(
                actor=SYSTEM,
                tenant=None,
                action="usage_report.built",
                target=report,
                after={"period": period.isoformat(), "sha256": report.sha256, "devices": report.device_count},
            )
            transaction.on_commit(send_enqueue)
    except IntegrityError:
        return UsageReport.objects.get(serial=licence.serial, period=period), False
    return report, True


# --- Delivering -----------------------------------------------------------------------------


class DeliveryFailed(Exception):
    """The oldest unsent report could not be delivered; try again in `retry_in` seconds.

    Only plain values, passed on to Exception, so that Celery can pickle it with a retry.
    """

    def __init__(self, period: str, retry_in: int, reason: str) -> None:
        super().__init__(period, retry_in, reason)
        self.period = period
        self.retry_in = retry_in
        self.reason = reason

    def __str__(self) -> str:
        return f"Usage report {self.period} not delivered ({self.reason}); next try in {self.retry_in} s"


@dataclass(frozen=True)
class DeliveryRun:
    # idle: nothing to send; busy: another sender holds the oldest report; not_due: its next try
    # is later (another retry is scheduled); not_configured: no licence.
    state: str
    delivered: int = 0
    next_attempt_at: datetime | None = None


def backoff_seconds(failed_attempts: int) -> int:
    """Seconds before the next try after `failed_attempts` failures in a row (Celery's formula)."""
    return get_exponential_backoff_interval(
        factor=conf.BACKOFF_FACTOR_SECONDS,
        retries=max(0, failed_attempts - 1),
        maximum=conf.BACKOFF_MAX_SECONDS,
        full_jitter=True,
    )


def _claim(report: UsageReport, now: datetime) -> bool:
    claimed = (
        UsageReport.objects.filter(pk=report.pk, status=UsageReport.Status.PENDING)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(lease_until=now + conf.send_lease())
    )
    return claimed == 1


def _record_failure(report: UsageReport, *, started: datetime, outcome: str, status: int | None, detail: str) -> int:
    now = timezone.now()
    with transaction.atomic():
        DeliveryAttempt.objects.create(
            report=report,
            attempted_at=started,
            duration_ms=int((now - started).total_seconds() * 1000),
            outcome=outcome,
            http_status=status,
            detail=detail[:300],
        )
        UsageReport.objects.filter(pk=report.pk).update(failed_attempts=F("failed_attempts") + 1)
        report.refresh_from_db(fields=["failed_attempts"])
        retry_in = backoff_seconds(report.failed_attempts)
        report.next_attempt_at = now + timedelta(seconds=retry_in)
        report.lease_until = None
        report.save(update_fields=["next_attempt_at", "lease_until"])
    return retry_in


def _record_outcome(
    report: UsageReport, *, started: datetime, status: str, outcome: str, http_status: int, receipt: dict, detail: str
) -> None:
    now = timezone.now()
    with transaction.atomic():
        DeliveryAttempt.objects.create(
            report=report,
            attempted_at=started,
            duration_ms=int((now - started).total_seconds() * 1000),
            outcome=outcome,
            http_status=http_status,
            detail=detail[:300],
        )
        report.status = status
        report.receipt = receipt
        report.delivered_at = now if status == UsageReport.Status.DELIVERED else None
        report.lease_until = None
        report.next_attempt_at = None
        report.save(update_fields=["status", "receipt", "delivered_at", "lease_until", "next_attempt_at"])
        audit_record(
            actor=SYSTEM,
            tenant=None,
            action=f"usage_report.{status}",
            target=report,
            after={"period": report.period.isoformat(), "receipt_id": receipt.get("receipt_id", "")},
        )


def _send(report: UsageReport, licence: PortalLicence) -> bool:
    """Send one claimed report and record how it went: True if delivered, False if the service
    will never take it; raise DeliveryFailed to try again later."""
    started = timezone.now()
    try:
        answer = client.post_signed(
            endpoint="v1/reports/",
            body=bytes(report.body),
            serial=licence.serial,
            licence_key=licence.licence_key,
            idempotency_key=str(report.idempotency_key),
            content_encoding="gzip",
        )
    except ServiceUnreachable as failure:
        retry_in = _record_failure(
            report, started=started, outcome=failure.outcome, status=failure.http_status, detail=failure.detail
        )
        raise DeliveryFailed(str(report.period), retry_in, failure.outcome) from failure
    except ServiceRefused as refusal:
        if refusal.code in FINAL_REFUSALS:
            _record_outcome(
                report,
                started=started,
                status=UsageReport.Status.REJECTED,
                outcome=DeliveryAttempt.Outcome.REFUSED,
                http_status=refusal.http_status,
                receipt=refusal.answer,
                detail=f"{refusal.code}: {refusal.detail}",
            )
            return False
        # Anything else (a bad signature after a key change, a clock outside the replay window, an
        # unknown serial) may be fixed by the operator: keep the report and keep trying.
        retry_in = _record_failure(
            report,
            started=started,
            outcome=DeliveryAttempt.Outcome.REFUSED,
            status=refusal.http_status,
            detail=f"{refusal.code}: {refusal.detail}",
        )
        raise DeliveryFailed(str(report.period), retry_in, refusal.code) from refusal
    duplicate = bool(answer.data.get("duplicate"))
    _record_outcome(
        report,
        started=started,
        status=UsageReport.Status.DELIVERED,
        outcome=DeliveryAttempt.Outcome.DUPLICATE if duplicate else DeliveryAttempt.Outcome.DELIVERED,
        http_status=answer.status,
        receipt=answer.data,
        detail="" if answer.data.get("sha256") == report.sha256 else "the service's digest differs",
    )
    return True


def outbox_deliver_pending(*, force: bool = False) -> DeliveryRun:
    """Send this portal's unsent reports, oldest first, until none is left or one fails.

    `force` tries the oldest report even if its next try is scheduled later (an operator's "send now").
    Raise DeliveryFailed when a report could not be delivered.
    """
    licence = licence_current()
    if licence is None:
        return DeliveryRun(state="not_configured")
    delivered = 0
    while True:
        now = timezone.now()
        head = (
            UsageReport.objects.filter(serial=licence.serial, status=UsageReport.Status.PENDING)
            .order_by("period")
            .first()
        )
        if head is None:
            return DeliveryRun(state="idle", delivered=delivered)
        # One second of slack: Celery's countdown starts a moment after next_attempt_at was stored.
        if not force and head.next_attempt_at is not None and head.next_attempt_at > now + timedelta(seconds=1):
            return DeliveryRun(state="not_due", delivered=delivered, next_attempt_at=head.next_attempt_at)
        if not _claim(head, now):
            return DeliveryRun(state="busy", delivered=delivered)
        delivered += 1 if _send(head, licence) else 0
        force = False


def outbox_sweep(*, now: datetime | None = None) -> bool:
    """Enqueue the sender if a report waits whose next try is overdue (its retry was lost); return whether."""
    now = now or timezone.now()
    head = UsageReport.objects.filter(status=UsageReport.Status.PENDING).order_by("period").first()
    if head is None:
        return False
    if head.lease_until is not None and head.lease_until > now:
        return False
    if head.next_attempt_at is not None and head.next_attempt_at > now - conf.SWEEP_OVERDUE:
        return False
    send_enqueue()
    return True
