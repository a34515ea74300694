"""Celery tasks of the GDPR workflows. Each takes ids, re-fetches and calls one service; all are
idempotent, so a task that runs twice (a redelivered message, the sweeper) changes nothing more."""

from __future__ import annotations

from celery import shared_task

from tenants import services_erasure, services_export


@shared_task(ignore_result=True)
def erasure_start_task(request_id: int) -> None:
    """Start a request whose grace period is over (a zero-day grace starts at once)."""
    services_erasure.erasure_start(request_id=request_id)


@shared_task(ignore_result=True)
def erasure_execute_task(request_id: int) -> str:
    """Advance a running request step by step until it waits, propagates or spends its budget."""
    return services_erasure.erasure_execute(request_id=request_id)


@shared_task(ignore_result=True)
def erasure_propagate_task(status_id: int) -> str:
    """Ask one recipient to erase a request's subject; a failure is retried later by the sweeper."""
    return services_erasure.erasure_propagate(status_id=status_id)


@shared_task(ignore_result=True)
def export_build_task(export_id: int) -> None:
    services_export.export_build(export_id=export_id)


@shared_task(ignore_result=True)
def privacy_sweep() -> dict[str, int]:
    """Start, resume and retry GDPR requests whose time came; beat sends this every 30 s (0011)."""
    return services_erasure.privacy_sweep()
