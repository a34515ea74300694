"""Platform staff pages: manage tenants and watch platform health. They show no tenant data."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from tenants import selectors, services
from tenants.audit import actor_from_request
from tenants.forms import TenantCreateForm
from tenants.health import platform_health


def platform_staff_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Let platform staff in; send anonymous people to log in; everyone else finds nothing (404)."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not request.user.is_staff or getattr(request, "api_key", None) is not None:
            raise Http404
        return view(request, *args, **kwargs)

    return wrapper


@platform_staff_required
@require_http_methods(["GET"])
def dashboard(request: HttpRequest) -> HttpResponse:
    tenants = selectors.tenants_for_platform().annotate(member_count=Count("memberships"))
    return render(
        request,
        "platform/dashboard.html",
        {"tenants": tenants, "health": platform_health(), "form": TenantCreateForm()},
    )


@platform_staff_required
@require_POST
def tenant_new(request: HttpRequest) -> HttpResponse:
    form = TenantCreateForm(request.POST)
    if form.is_valid():
        tenant = services.tenant_create(actor=actor_from_request(request), **form.cleaned_data)
        messages.success(request, f"Tenant {tenant.slug} created.")
    else:
        for errors in form.errors.values():
            messages.error(request, " ".join(str(error) for error in errors))
    return redirect("platform-dashboard")


@platform_staff_required
@require_POST
def tenant_suspend(request: HttpRequest, tenant_id: int) -> HttpResponse:
    tenant = selectors.tenant_get_for_platform(tenant_id=tenant_id)
    services.tenant_suspend(actor=actor_from_request(request), tenant=tenant)
    messages.success(request, f"Tenant {tenant.slug} is suspended.")
    return redirect("platform-dashboard")


@platform_staff_required
@require_POST
def tenant_reactivate(request: HttpRequest, tenant_id: int) -> HttpResponse:
    tenant = selectors.tenant_get_for_platform(tenant_id=tenant_id)
    services.tenant_reactivate(actor=actor_from_request(request), tenant=tenant)
    messages.success(request, f"Tenant {tenant.slug} is active again.")
    return redirect("platform-dashboard")


@platform_staff_required
@require_POST
def tenant_offboard(request: HttpRequest, tenant_id: int) -> HttpResponse:
    """Open a tenant's offboarding (the erasure of all its data): its owner must confirm it on the
    tenant's Privacy page, or it runs after the tenant has been suspended for 30 days."""
    from tenants.services_erasure import tenant_offboarding_request

    tenant = selectors.tenant_get_for_platform(tenant_id=tenant_id)
    try:
        tenant_offboarding_request(
            actor=actor_from_request(request), tenant=tenant, reason=request.POST.get("reason", "")
        )
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, f"Offboarding of {tenant.slug} requested; its owner must confirm it.")
    return redirect("platform-dashboard")
