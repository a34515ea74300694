"""GDPR pages: the list of requests (with a CSV export), one request with its actions, its receipt,
and exports. TenantMiddleware has checked each route's declared permission: auditors read,
owners and admins act."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import datetime, time

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from tenants import selectors_erasure as selectors
from tenants import services_erasure, services_export
from tenants.access import TenantHttpRequest, tenant_route
from tenants.audit import actor_from_request
from tenants.models_erasure import ErasureRequest
from tenants.personal_data import ADMIN, BACKUP_ACCOUNT

REQUESTS_SHOWN = 200


def _error_text(error: ValidationError) -> str:
    return " ".join(error.messages)


def _int(value: str | None) -> int | None:
    try:
        return int(value or "")
    except ValueError:
        return None


@tenant_route(read="privacy.view")
@require_http_methods(["GET"])
def privacy_requests(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    tenant = request.tenant
    context = {
        "requests": list(selectors.erasure_requests(tenant=tenant)[:REQUESTS_SHOWN]),
        "exports": list(selectors.exports_of(tenant=tenant)[:50]),
        "team": list(selectors.team_subjects(tenant=tenant)),
        "settings": services_erasure.privacy_settings_get(tenant=tenant),
        "now": timezone.now(),
    }
    return render(request, "privacy/requests.html", context)


def _csv_safe(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


class _Echo:
    def write(self, value: str) -> str:
        return value


def _request_rows(requests: list[ErasureRequest]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(
        ["id", "tombstone", "subject_kind", "state", "received_at", "due_at", "overdue", "finished_at"]
    )
    for row in requests:
        yield writer.writerow(
            [
                row.pk,
                row.tombstone,
                row.subject_kind,
                row.state,
                row.received_at.isoformat(),
                row.due_at.isoformat(),
                "yes" if row.is_overdue else "no",
                row.finished_at.isoformat() if row.finished_at else "",
            ]
        )


@tenant_route(read="privacy.view")
@require_http_methods(["GET"])
def privacy_requests_csv(request: TenantHttpRequest, tenant_slug: str) -> StreamingHttpResponse:
    # The CSV names requests by tombstone only: it may be shared without sharing anyone's name.
    rows = selectors.erasure_requests(tenant=request.tenant).iterator(chunk_size=1000)
    response = StreamingHttpResponse(_request_rows(list(rows)), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="{tenant_slug}-erasure-requests.csv"'
    return response


@tenant_route(read="privacy.manage", write="privacy.manage")
@require_http_methods(["GET", "POST"])
def erasure_new(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    source = request.POST if request.method == "POST" else request.GET
    kind = source.get("kind", BACKUP_ACCOUNT)
    subject_id = _int(source.get("subject"))
    label = (
        services_erasure.subject_describe(tenant=request.tenant, kind=kind, subject_id=subject_id)
        if subject_id is not None and kind in (BACKUP_ACCOUNT, ADMIN)
        else None
    )
    status, error = 200, ""
    if request.method == "POST":
        try:
            if label is None or subject_id is None:
                raise ValidationError("Choose a backup account or a team member that exists.")
            created = services_erasure.erasure_request_create(
                actor=actor_from_request(request),
                tenant=request.tenant,
                subject_kind=kind,
                subject_id=subject_id,
                asked_by=request.POST.get("asked_by", ""),
                verification=request.POST.get("verification", ""),
            )
        except ValidationError as problem:
            status, error = 400, _error_text(problem)
        else:
            messages.success(request, f"Erasure request {created.tombstone} recorded; due {created.due_at:%Y-%m-%d}.")
            return redirect("tenant-erasure", tenant_slug=tenant_slug, erasure_id=created.pk)
    context = {"kind": kind, "subject_id": subject_id, "label": label, "error": error, "post": request.POST}
    return render(request, "privacy/erasure_new.html", context, status=status)


@tenant_route(read="privacy.view")
@require_http_methods(["GET"])
def erasure_detail(request: TenantHttpRequest, tenant_slug: str, erasure_id: int) -> HttpResponse:
    erasure = selectors.erasure_get(tenant=request.tenant, erasure_id=erasure_id)
    context = {
        "erasure": erasure,
        "steps": list(erasure.steps.all()),
        "recipients": list(erasure.recipients.all()),
        "State": ErasureRequest.State,
    }
    return render(request, "privacy/erasure.html", context)


def _date_end(value: str) -> datetime | None:
    try:
        day = datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        return None
    return timezone.make_aware(datetime.combine(day, time.max))


@tenant_route(write="privacy.manage")
@require_POST
def erasure_act(request: TenantHttpRequest, tenant_slug: str, erasure_id: int) -> HttpResponse:
    erasure = selectors.erasure_get(tenant=request.tenant, erasure_id=erasure_id)
    actor, action, reason = actor_from_request(request), request.POST.get("action", ""), request.POST.get("reason", "")
    try:
        if action == "schedule":
            services_erasure.erasure_schedule(actor=actor, request=erasure)
        elif action == "cancel":
            services_erasure.erasure_cancel(actor=actor, request=erasure)
        elif action == "refuse":
            services_erasure.erasure_refuse(actor=actor, request=erasure, reason=reason)
        elif action == "extend":
            months = _int(request.POST.get("months")) or 0
            services_erasure.erasure_extend(actor=actor, request=erasure, months=months, reason=reason)
        elif action == "hold":
            until = _date_end(request.POST.get("until", ""))
            if until is None:
                raise ValidationError("Give the hold's end date.")
            services_erasure.erasure_hold(actor=actor, request=erasure, reason=reason, until=until)
        elif action == "release":
            services_erasure.erasure_release_hold(actor=actor, request=erasure)
        elif action == "retry":
            services_erasure.erasure_retry(actor=actor, request=erasure)
        else:
            raise ValidationError("Unknown action.")
    except ValidationError as problem:
        messages.error(request, _error_text(problem))
    else:
        messages.success(request, "Done.")
    return redirect("tenant-erasure", tenant_slug=tenant_slug, erasure_id=erasure.pk)


@tenant_route(read="privacy.view")
@require_http_methods(["GET"])
def erasure_receipt(request: TenantHttpRequest, tenant_slug: str, erasure_id: int) -> HttpResponse:
    erasure = selectors.erasure_get(tenant=request.tenant, erasure_id=erasure_id)
    context = {
        "erasure": erasure,
        "systems": selectors.receipt_systems(request=erasure),
        "recipients": list(erasure.recipients.all()),
        "kept": selectors.receipt_kept(kind=erasure.subject_kind),
        "suppression_days": services_erasure.privacy_settings_get(tenant=request.tenant).suppression_days,
    }
    return render(request, "privacy/receipt.html", context)


@tenant_route(write="privacy.manage")
@require_POST
def export_new(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    kind, subject_id = request.POST.get("kind", BACKUP_ACCOUNT), _int(request.POST.get("subject"))
    try:
        if subject_id is None:
            raise ValidationError("Choose a subject.")
        services_export.export_request(
            actor=actor_from_request(request), tenant=request.tenant, subject_kind=kind, subject_id=subject_id
        )
    except ValidationError as problem:
        messages.error(request, _error_text(problem))
    else:
        messages.success(request, "The export is being built; it will be listed here, ready to download once.")
    return redirect("tenant-privacy", tenant_slug=tenant_slug)


@tenant_route(write="privacy.manage")
@require_POST
def export_download(request: TenantHttpRequest, tenant_slug: str, export_id: int) -> HttpResponse:
    export = selectors.export_get(tenant=request.tenant, export_id=export_id)
    try:
        data = services_export.export_download(actor=actor_from_request(request), export=export)
    except ValidationError as problem:
        messages.error(request, _error_text(problem))
        return redirect("tenant-privacy", tenant_slug=tenant_slug)
    response = HttpResponse(data, content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{tenant_slug}-export-{export.pk}.zip"'
    response["Cache-Control"] = "no-store"
    return response


@tenant_route(write="privacy.manage")
@require_POST
def privacy_settings(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    grace_days, suppression_days = _int(request.POST.get("grace_days")), _int(request.POST.get("suppression_days"))
    try:
        if grace_days is None or suppression_days is None:
            raise ValidationError("Give both numbers of days.")
        services_erasure.privacy_settings_update(
            actor=actor_from_request(request),
            tenant=request.tenant,
            grace_days=grace_days,
            suppression_days=suppression_days,
        )
    except ValidationError as problem:
        messages.error(request, _error_text(problem))
    else:
        messages.success(request, "Privacy settings saved.")
    return redirect("tenant-privacy", tenant_slug=tenant_slug)
