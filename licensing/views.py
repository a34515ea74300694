"""The portal side's pages: platform staff see every usage report exactly as sent, its delivery
attempts and the service's receipt; tenant admins see the part of each report about their tenant.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST
from django_celery_beat.models import PeriodicTask

from licensing import conf, selectors, services
from licensing.client import LicensingNotConfigured
from licensing.models import UsageReport
from tenants.access import TenantHttpRequest, tenant_route
from tenants.views_platform import platform_staff_required

# Larger reports are not pretty-printed into the page (the raw download has them whole).
PRETTY_PRINT_LIMIT = 1024 * 1024
REPORTS_LISTED = 100
SCHEDULES = ("build usage report", "sweep usage report outbox")


def reports_side(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Not found unless this installation builds usage reports (role "portal" or "both")."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not conf.reports_enabled():
            raise Http404
        return view(request, *args, **kwargs)

    return wrapper


def _pretty(data: bytes) -> str:
    return json.dumps(json.loads(data), indent=2, ensure_ascii=False)


def _selected(request: HttpRequest, reports: list[UsageReport]) -> UsageReport | None:
    if "report" in request.GET:
        return selectors.usage_report_get(report_id=request.GET["report"])
    return reports[0] if reports else None


@platform_staff_required
@reports_side
@require_GET
def usage_reports(request: HttpRequest) -> HttpResponse:
    reports = list(selectors.usage_reports()[:REPORTS_LISTED])
    selected = _selected(request, reports)
    context: dict[str, Any] = {
        "licence": selectors.licence_get(),
        "status": selectors.reporting_status(),
        "reports": reports,
        "selected": selected,
        "schedules": PeriodicTask.objects.filter(name__in=SCHEDULES).select_related("interval").order_by("name"),
        "service_url": conf.service_url(""),
        "role": conf.role(),
    }
    if selected is not None:
        context["attempts"] = selectors.attempts_of(report=selected)
        context["receipt"] = json.dumps(selected.receipt, indent=2) if selected.receipt else ""
        if selected.size_bytes <= PRETTY_PRINT_LIMIT:
            context["pretty"] = _pretty(selectors.usage_report_json(report=selected))
    return render(request, "licensing/usage_reports.html", context)


@platform_staff_required
@reports_side
@require_GET
def usage_report_raw(request: HttpRequest) -> HttpResponse:
    """The report's JSON, the exact bytes that were sent (after gzip is undone)."""
    report = selectors.usage_report_get(report_id=request.GET.get("report"))
    response = HttpResponse(selectors.usage_report_json(report=report), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="usage-report-{report.period}.json"'
    return response


@platform_staff_required
@reports_side
@require_POST
def usage_reports_run(request: HttpRequest) -> HttpResponse:
    """Build the last closed period's report if it is missing, and send what waits now."""
    try:
        report, created = services.usage_report_create()
    except LicensingNotConfigured as error:
        messages.error(request, str(error))
        return redirect("platform-usage-reports")
    services.send_enqueue(force=True)
    messages.success(
        request,
        f"The report for {report.period} {'was built' if created else 'exists'}; the worker sends what waits now.",
    )
    return redirect("platform-usage-reports")


@tenant_route(read="audit.view")
@require_GET
def tenant_usage(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    if not conf.reports_enabled():
        raise Http404
    reports = list(selectors.usage_reports()[:REPORTS_LISTED])
    selected = _selected(request, reports)
    part = selectors.usage_report_tenant_part(report=selected, tenant=request.tenant) if selected else None
    return render(
        request,
        "licensing/tenant_usage.html",
        {"reports": reports, "selected": selected, "part": _pretty(part) if part is not None else None},
    )
