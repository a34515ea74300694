"""Reads of GDPR requests and exports. Each takes the tenant: another tenant's row is a 404."""

from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404

from tenants import personal_data
from tenants.models import Membership, Tenant
from tenants.models_erasure import DataExport, ErasureRequest


def erasure_requests(*, tenant: Tenant) -> QuerySet[ErasureRequest]:
    return ErasureRequest.objects.filter(tenant=tenant).select_related("requested_by").order_by("-received_at", "-id")


def erasure_get(*, tenant: Tenant, erasure_id: int) -> ErasureRequest:
    try:
        return ErasureRequest.objects.select_related("tenant", "requested_by").get(tenant=tenant, pk=erasure_id)
    except (ErasureRequest.DoesNotExist, ValueError):
        raise Http404 from None


def exports_of(*, tenant: Tenant) -> QuerySet[DataExport]:
    return DataExport.objects.filter(tenant=tenant).select_related("requested_by").defer("archive")


def export_get(*, tenant: Tenant, export_id: int) -> DataExport:
    try:
        return DataExport.objects.defer("archive").get(tenant=tenant, pk=export_id)
    except (DataExport.DoesNotExist, ValueError):
        raise Http404 from None


def team_subjects(*, tenant: Tenant) -> QuerySet[Membership]:
    return Membership.objects.filter(tenant=tenant).select_related("user").order_by("user__username")


def receipt_kept(*, kind: str) -> list[personal_data.Kept]:
    """Return what an erasure of this kind keeps, and why, from every handler that applies."""
    return [kept for handler in personal_data.handlers(kind) for kept in handler.kept]


def receipt_systems(*, request: ErasureRequest) -> list[dict[str, object]]:
    """Return, per handler, what the erasure did in the portal (counts of rows by kind)."""
    systems: dict[str, dict[str, int]] = {}
    for step in request.steps.all():
        handler_name = step.name.split(".", 1)[0]
        totals = systems.setdefault(handler_name, {})
        for key, value in step.counts.items():
            totals[key] = totals.get(key, 0) + int(value)
    return [{"name": name, "counts": counts} for name, counts in systems.items()]
