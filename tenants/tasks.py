"""Celery tasks of the tenancy app. Each takes ids, re-fetches what it needs and calls one function."""

from __future__ import annotations

from celery import shared_task

from tenants.audit_chain import digests_sign
from tenants.health import WORKER, heartbeat_record, this_process_label
from tenants.services_access import access_lapse_and_expire


@shared_task(ignore_result=True)
def record_heartbeat() -> None:
    """Record that a worker is alive; beat sends this every 30 s (migration 0003 schedules it)."""
    heartbeat_record(service=WORKER, detail=this_process_label())


@shared_task(ignore_result=True)
def sign_audit_digests() -> int:
    """Sign the head of every audit chain that grew; beat sends this every 5 minutes (migration 0006)."""
    return len(digests_sign())


@shared_task(ignore_result=True)
def lapse_and_expire_staff_access() -> int:
    """Lapse unanswered staff access requests and expire grants; beat sends this every minute (0008)."""
    return access_lapse_and_expire()


# The GDPR workflow's tasks live in their own module; importing it registers them with Celery.
from tenants import tasks_erasure  # noqa: E402, F401
