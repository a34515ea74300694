"""Celery tasks of licensing. Each takes no arguments, re-reads the outbox and calls one service.

Beat sends build_usage_report and sweep_usage_outbox (migration 0002 schedules both; the schedules
are editable in the Django admin). send_usage_reports is enqueued after a report is stored and
retries itself with exponential backoff and jitter until the service takes the report.
"""

from __future__ import annotations

import logging

from celery import shared_task

from licensing import conf, services
from licensing.client import LicensingNotConfigured

logger = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def build_usage_report() -> str:
    """Store the report for the last closed period unless it exists; safe to run any number of times."""
    if not conf.reports_enabled():
        return "disabled"
    try:
        report, created = services.usage_report_create()
    except LicensingNotConfigured as error:
        logger.warning("No usage report built: %s", error)
        return "not_configured"
    return f"{report.period} {'built' if created else 'exists'}"


@shared_task(bind=True, ignore_result=True, max_retries=None)
def send_usage_reports(self, force: bool = False) -> int:  # type: ignore[no-untyped-def]
    """Deliver the unsent reports in order; on failure retry after the row's backoff (forever)."""
    if not conf.reports_enabled():
        return 0
    try:
        run = services.outbox_deliver_pending(force=force)
    except services.DeliveryFailed as failure:
        raise self.retry(countdown=failure.retry_in, exc=failure) from None
    return run.delivered


@shared_task(ignore_result=True)
def sweep_usage_outbox() -> bool:
    """Enqueue the sender if a report waits and its retry is overdue (a worker died holding it)."""
    if not conf.reports_enabled():
        return False
    return services.outbox_sweep()
