"""The licensing service's pages for its staff: registered portals and each portal's billing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from functools import wraps
from typing import Any, TypeVar, cast

from django import forms
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from licensing import conf, selectors_billing, services_receiver
from licensing.selectors_billing import BOOSTERS
from tenants.audit import actor_from_request
from tenants.views_platform import platform_staff_required

USERNAMES_SHOWN = 500
View = TypeVar("View", bound=Callable[..., HttpResponseBase])


class PortalRegisterForm(forms.Form):
    name = forms.CharField(max_length=200, label="Portal name")


def staff_only(view: View) -> View:
    """tenants.views_platform.platform_staff_required, for views of any response type."""
    return cast(View, platform_staff_required(cast(Callable[..., HttpResponse], view)))


def service_side(view: View) -> View:
    """Not found unless this installation is the licensing service (role "service" or "both")."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not conf.service_enabled():
            raise Http404
        return view(request, *args, **kwargs)

    return cast(View, wrapper)


def _period(request: HttpRequest) -> date | None:
    value = request.GET.get("period", "")
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise Http404 from None


@staff_only
@service_side
@require_GET
def billing(request: HttpRequest) -> HttpResponse:
    serial = request.GET.get("portal", "")
    if not serial:
        return render(
            request,
            "licensing/billing_portals.html",
            {"portals": selectors_billing.portals_for_billing(), "form": PortalRegisterForm()},
        )
    portal = selectors_billing.portal_get_for_billing(serial=serial)
    trend = selectors_billing.billing_trend(portal=portal)
    report = selectors_billing.report_for_billing(portal=portal, period=_period(request))
    context: dict[str, Any] = {
        "portal": portal,
        "trend": trend,
        "chart": selectors_billing.trend_chart(reports=trend),
        "report": report,
        "erasures": selectors_billing.erasures_of(portal=portal)[:50],
    }
    if report is not None:
        usernames = selectors_billing.usernames_of(selectors_billing.report_payload(report))
        context["boosters"] = [(name, report.boosters.get(name, 0)) for name in BOOSTERS]
        context["admins"] = usernames.admins[:USERNAMES_SHOWN]
        context["admins_more"] = max(0, len(usernames.admins) - USERNAMES_SHOWN)
        context["admins_total"] = len(usernames.admins)
        context["accounts"] = usernames.backup_accounts[:USERNAMES_SHOWN]
        context["accounts_more"] = max(0, len(usernames.backup_accounts) - USERNAMES_SHOWN)
        context["accounts_total"] = len(usernames.backup_accounts)
    return render(request, "licensing/billing_portal.html", context)


@staff_only
@service_side
@require_POST
def billing_register(request: HttpRequest) -> HttpResponse:
    form = PortalRegisterForm(request.POST)
    if not form.is_valid():
        return render(
            request,
            "licensing/billing_portals.html",
            {"portals": selectors_billing.portals_for_billing(), "form": form},
            status=400,
        )
    registration = services_receiver.portal_register(actor=actor_from_request(request), name=form.cleaned_data["name"])
    return render(
        request,
        "licensing/billing_portals.html",
        {
            "portals": selectors_billing.portals_for_billing(),
            "form": PortalRegisterForm(),
            "registration": registration,
        },
    )


@staff_only
@service_side
@require_GET
def billing_export(request: HttpRequest) -> StreamingHttpResponse:
    """CSV: the billing figures per period, or with ?period= the device lines of one report."""
    portal = selectors_billing.portal_get_for_billing(serial=request.GET.get("portal", ""))
    period = _period(request)
    if period is None:
        rows = selectors_billing.trend_csv_rows(portal=portal)
        filename = f"billing-{portal.serial}.csv"
    else:
        report = selectors_billing.report_for_billing(portal=portal, period=period)
        if report is None:
            raise Http404
        rows = selectors_billing.device_csv_rows(report=report)
        filename = f"billing-{portal.serial}-{period}.csv"
    response = StreamingHttpResponse(rows, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
