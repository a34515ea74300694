"""Staff access pages: the tenant's side (answer requests, revoke grants, read the consent log, set
the policy) and the platform staff's side (request access, my requests, break-glass). The checks
ran already: TenantMiddleware for tenant routes, platform_staff_required for platform routes."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import datetime, time, timedelta
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from tenants import selectors, selectors_access, services_access
from tenants.access import TenantHttpRequest, tenant_route
from tenants.audit import actor_from_request
from tenants.forms_access import (
    AccessPolicyForm,
    AccessRequestForm,
    ApproveForm,
    BreakGlassForm,
    ConsentLogFilterForm,
    DenyForm,
    minutes,
)
from tenants.models import AuditEvent
from tenants.roles import role_allows
from tenants.views_platform import platform_staff_required

CONSENT_LOG_LIMIT = 500


def _error_text(error: ValidationError) -> str:
    return " ".join(error.messages)


# --- The tenant's side ------------------------------------------------------------------------


@tenant_route(read="staff_access.view")
@require_http_methods(["GET"])
def staff_access(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    tenant = request.tenant
    pending = list(selectors_access.access_requests_pending(tenant=tenant))
    now = timezone.now()
    return render(
        request,
        "access/tenant_staff_access.html",
        {
            "pending": [(item, ApproveForm(prefix=f"r{item.pk}"), item.lapses_at <= now) for item in pending],
            "grants": selectors_access.access_grants_live(tenant=tenant),
            "history": selectors_access.access_requests_of_tenant(tenant=tenant)[:50],
            "policy": selectors_access.access_policy_get(tenant=tenant),
            "can_decide": role_allows(request.membership.role, "staff_access.decide"),
            "can_set_policy": role_allows(request.membership.role, "staff_access.policy"),
        },
    )


@tenant_route(write="staff_access.decide")
@require_POST
def staff_access_approve(request: TenantHttpRequest, tenant_slug: str, request_id: int) -> HttpResponse:
    access_request = selectors_access.access_request_get(tenant=request.tenant, request_id=request_id)
    form = ApproveForm(request.POST, prefix=f"r{access_request.pk}")
    if form.is_valid():
        duration = form.cleaned_data.get("duration_minutes")
        try:
            services_access.access_request_approve(
                actor=actor_from_request(request),
                access_request=access_request,
                duration=minutes(duration) if duration else None,
                areas=form.cleaned_data["areas"] or None,
                scope_write=False if form.cleaned_data["read_only"] else None,
            )
            messages.success(request, f"Staff access request #{access_request.pk} approved.")
        except ValidationError as error:
            messages.error(request, _error_text(error))
    else:
        messages.error(request, "Check the duration and areas.")
    return redirect("tenant-staff-access", tenant_slug=tenant_slug)


@tenant_route(write="staff_access.decide")
@require_POST
def staff_access_deny(request: TenantHttpRequest, tenant_slug: str, request_id: int) -> HttpResponse:
    access_request = selectors_access.access_request_get(tenant=request.tenant, request_id=request_id)
    form = DenyForm(request.POST)
    note = form.cleaned_data["note"] if form.is_valid() else ""
    try:
        services_access.access_request_deny(actor=actor_from_request(request), access_request=access_request, note=note)
        messages.success(request, f"Staff access request #{access_request.pk} denied.")
    except ValidationError as error:
        messages.error(request, _error_text(error))
    return redirect("tenant-staff-access", tenant_slug=tenant_slug)


@tenant_route(write="staff_access.decide")
@require_POST
def staff_access_revoke(request: TenantHttpRequest, tenant_slug: str, request_id: int) -> HttpResponse:
    grant = selectors_access.access_request_get(tenant=request.tenant, request_id=request_id)
    try:
        services_access.access_grant_revoke(actor=actor_from_request(request), grant=grant)
        messages.success(request, f"Staff access grant #{grant.pk} revoked.")
    except ValidationError as error:
        messages.error(request, _error_text(error))
    return redirect("tenant-staff-access", tenant_slug=tenant_slug)


def _consent_events(request: TenantHttpRequest, form: ConsentLogFilterForm) -> QuerySet[AuditEvent]:
    data = form.cleaned_data if form.is_valid() else {}

    def start_of(day: Any) -> datetime | None:
        return timezone.make_aware(datetime.combine(day, time.min)) if day else None

    until = data.get("until")
    return selectors_access.consent_log(
        tenant=request.tenant,
        since=start_of(data.get("since")),
        until=start_of(until + timedelta(days=1)) if until else None,
        grant_id=data.get("grant"),
    )


@tenant_route(read="staff_access.view")
@require_http_methods(["GET"])
def consent_log(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    form = ConsentLogFilterForm(request.GET or None)
    events = _consent_events(request, form)
    return render(
        request,
        "access/consent_log.html",
        {"form": form, "events": events[:CONSENT_LOG_LIMIT], "query": request.GET.urlencode()},
    )


def _event_row(event: AuditEvent) -> dict[str, Any]:
    after = event.after or {}
    return {
        "id": event.pk,
        "time": event.created_at.isoformat(),
        "action": event.action,
        "actor": event.actor_label,
        "actor_role": event.actor_role,
        "grant_id": after.get("grant_id") or (event.target_id if event.target_type == "accessrequest" else None),
        "method": after.get("method"),
        "path": after.get("path"),
        "ip_address": event.ip_address,
        "details": after,
        "row_hash": event.row_hash,
    }


def _csv_safe(value: object) -> str:
    """Return a cell that a spreadsheet will not run as a formula (CSV injection)."""
    text = "" if value is None else (json.dumps(value) if isinstance(value, dict) else str(value))
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


class _Echo:
    def write(self, value: str) -> str:
        return value


def _csv_rows(events: QuerySet[AuditEvent]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    columns = ["id", "time", "action", "actor", "actor_role", "grant_id", "method", "path", "ip_address", "details"]
    yield writer.writerow(columns + ["row_hash"])
    for event in events.iterator(chunk_size=2000):
        row = _event_row(event)
        yield writer.writerow([_csv_safe(row[column]) for column in columns] + [row["row_hash"]])


@tenant_route(read="staff_access.view")
@require_http_methods(["GET"])
def consent_log_export_csv(request: TenantHttpRequest, tenant_slug: str) -> StreamingHttpResponse:
    events = _consent_events(request, ConsentLogFilterForm(request.GET or None))
    response = StreamingHttpResponse(_csv_rows(events), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="{tenant_slug}-consent-log.csv"'
    return response


@tenant_route(read="staff_access.view")
@require_http_methods(["GET"])
def consent_log_export_json(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    events = _consent_events(request, ConsentLogFilterForm(request.GET or None))
    body = json.dumps({"tenant": tenant_slug, "events": [_event_row(event) for event in events]}, indent=1)
    response = HttpResponse(body, content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{tenant_slug}-consent-log.json"'
    return response


@tenant_route(read="staff_access.view", write="staff_access.policy")
@require_http_methods(["GET", "POST"])
def staff_access_policy(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    policy = selectors_access.access_policy_get(tenant=request.tenant)
    initial = {
        "default_minutes": int(policy.default_duration.total_seconds() // 60),
        "max_minutes": int(policy.max_duration.total_seconds() // 60),
        "approvers": policy.approvers,
        "allow_break_glass": policy.allow_break_glass,
    }
    form = AccessPolicyForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            services_access.access_policy_update(
                actor=actor_from_request(request),
                tenant=request.tenant,
                default_duration=minutes(data["default_minutes"]),
                max_duration=minutes(data["max_minutes"]),
                approvers=data["approvers"],
                allow_break_glass=data["allow_break_glass"],
            )
            messages.success(request, "Staff access policy saved.")
            return redirect("tenant-staff-access-policy", tenant_slug=tenant_slug)
        except ValidationError as error:
            form.add_error(None, error.messages)
    return render(
        request,
        "access/policy.html",
        {"form": form, "can_set_policy": role_allows(request.membership.role, "staff_access.policy")},
    )


# --- The platform staff's side ----------------------------------------------------------------


def _chosen_tenant(request: HttpRequest, value: Any) -> Any:
    try:
        return selectors.tenant_get_for_platform(tenant_id=int(value))
    except (TypeError, ValueError):
        return None


@platform_staff_required
@require_http_methods(["GET", "POST"])
def platform_access(request: HttpRequest) -> HttpResponse:
    """Show the staff member's requests and grants, and the form to request access to a tenant."""
    tenant = _chosen_tenant(request, request.POST.get("tenant") or request.GET.get("tenant"))
    form = AccessRequestForm(request.POST or None, initial={"tenant": tenant.pk if tenant else None})
    if request.method == "POST" and tenant is not None and form.is_valid():
        data = form.cleaned_data
        try:
            created = services_access.access_request_create(
                actor=actor_from_request(request),
                tenant=tenant,
                reason_code=data["reason_code"],
                ticket_reference=data["ticket_reference"],
                justification=data["justification"],
                areas=data["areas"],
                scope_write=data["scope_write"],
                requested_duration=minutes(data["duration_minutes"]) if data.get("duration_minutes") else None,
            )
            messages.success(request, f"Access request #{created.pk} sent to {tenant.slug}.")
            return redirect("platform-access")
        except ValidationError as error:
            form.add_error(None, error.messages)
    now = timezone.now()
    return render(
        request,
        "access/platform_access.html",
        {
            "form": form if tenant is not None else None,
            "tenant": tenant,
            "requests": selectors_access.access_requests_of_requester(user=request.user)[:100],
            "now": now,
        },
    )


@platform_staff_required
@require_POST
def platform_access_cancel(request: HttpRequest, request_id: int) -> HttpResponse:
    access_request = selectors_access.access_request_get_for_requester(user=request.user, request_id=request_id)
    try:
        services_access.access_request_cancel(actor=actor_from_request(request), access_request=access_request)
        messages.success(request, f"Access request #{access_request.pk} cancelled.")
    except ValidationError as error:
        messages.error(request, _error_text(error))
    return redirect("platform-access")


@platform_staff_required
@require_POST
def platform_access_complete(request: HttpRequest, request_id: int) -> HttpResponse:
    grant = selectors_access.access_request_get_for_requester(user=request.user, request_id=request_id)
    try:
        services_access.access_grant_complete(actor=actor_from_request(request), grant=grant)
        messages.success(request, f"Access grant #{grant.pk} ended.")
    except ValidationError as error:
        messages.error(request, _error_text(error))
    return redirect("platform-access")


@platform_staff_required
@require_http_methods(["GET", "POST"])
def platform_break_glass(request: HttpRequest) -> HttpResponse:
    """Request break-glass access to a tenant, and approve other staff members' break-glass requests."""
    tenant = _chosen_tenant(request, request.POST.get("tenant") or request.GET.get("tenant"))
    form = BreakGlassForm(request.POST or None, initial={"tenant": tenant.pk if tenant else None})
    if request.method == "POST" and tenant is not None and form.is_valid():
        data = form.cleaned_data
        try:
            created = services_access.break_glass_request(
                actor=actor_from_request(request),
                tenant=tenant,
                incident_id=data["incident_id"],
                justification=data["justification"],
                areas=data["areas"],
                scope_write=data["scope_write"],
            )
            messages.success(request, f"Break-glass request #{created.pk} waits for a second staff member.")
            return redirect("platform-break-glass")
        except ValidationError as error:
            form.add_error(None, error.messages)
    return render(
        request,
        "access/platform_break_glass.html",
        {
            "form": form if tenant is not None else None,
            "tenant": tenant,
            "awaiting": selectors_access.break_glass_requests_awaiting_second_staff(user=request.user),
        },
    )


@platform_staff_required
@require_POST
def platform_break_glass_approve(request: HttpRequest, request_id: int) -> HttpResponse:
    access_request = selectors_access.break_glass_request_get(request_id=request_id)
    try:
        services_access.break_glass_approve(actor=actor_from_request(request), access_request=access_request)
        messages.success(request, f"Break-glass request #{access_request.pk} approved; the tenant has been told.")
    except ValidationError as error:
        messages.error(request, _error_text(error))
    return redirect("platform-break-glass")
