"""The tenant boundary for HTTP: every page and API route under a tenant passes through here.

ApiKeyMiddleware turns a bearer key into the request's user. TenantMiddleware resolves the tenant
named in the URL (`tenant_slug`) once, checks membership (another tenant's data is a 404), the
tenant's status, its two-factor policy and the route's declared permission (a 403), in that order.

Platform staff who are not members reach a tenant only through a live access grant the tenant
approved (tenants.selectors.tenant_access_get); each request they make inside the tenant is logged
in the tenant's consent log, allowed ("staff_access.used") or not ("staff_access.denied").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils.functional import SimpleLazyObject

from tenants.access import is_api_request, required_permission, route_declaration
from tenants.api_errors import json_error
from tenants.audit import actor_from_request
from tenants.roles import role_allows
from tenants.selectors import api_key_authenticate, tenant_access_get
from tenants.selectors_access import StaffAccessDenied, access_requests_pending_count
from tenants.services import api_key_touch
from tenants.services_access import staff_access_denied, staff_access_used


class ApiKeyMiddleware:
    """Authenticate `Authorization: Bearer <key>`; a bad key is refused here with 401."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.api_key = None  # type: ignore[attr-defined]
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if header[:7].lower() == "bearer ":
            api_key = api_key_authenticate(raw_key=header[7:].strip())
            if api_key is None:
                response = json_error(401, "not_authenticated", "The API key is invalid, expired or revoked.")
                response["WWW-Authenticate"] = 'Bearer realm="api"'
                return response
            api_key_touch(api_key=api_key)
            request.api_key = api_key  # type: ignore[attr-defined]
            request.user = api_key.user
            # Two-factor verification belongs to browser sessions; a key is never "verified".
            request.user.is_verified = lambda: False  # type: ignore[attr-defined]
            # A bearer key is not sent by browsers on their own, so cross-site forgery cannot use it.
            request._dont_enforce_csrf_checks = True  # type: ignore[attr-defined]
        return self.get_response(request)


class TenantMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.tenant = None  # type: ignore[attr-defined]
        request.membership = None  # type: ignore[attr-defined]
        request.staff_grant = None  # type: ignore[attr-defined]
        request.staff_access_pending = 0  # type: ignore[attr-defined]
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view_func: Callable[..., Any], view_args: Any, view_kwargs: dict[str, Any]
    ) -> HttpResponse | None:
        slug = view_kwargs.get("tenant_slug")
        if slug is None:
            return None
        api = is_api_request(request)
        if not request.user.is_authenticated:
            if api:
                return json_error(401, "not_authenticated", "Authentication credentials were not provided.")
            return redirect_to_login(request.get_full_path())
        try:
            access = tenant_access_get(user=request.user, slug=slug, api_key=getattr(request, "api_key", None))
        except StaffAccessDenied as denied:
            staff_access_denied(
                actor=actor_from_request(request),
                tenant=denied.tenant,
                grant=None,
                path=request.path,
                method=request.method or "GET",
                reason="no_grant",
            )
            if api:
                return json_error(404, "not_found", "Not found.")
            raise Http404 from None
        except Http404:
            if api:
                return json_error(404, "not_found", "Not found.")
            raise
        request.tenant = access.tenant  # type: ignore[attr-defined]
        request.membership = access.membership  # type: ignore[attr-defined]
        request.staff_grant = access.grant  # type: ignore[attr-defined]
        if access.grant is None and role_allows(access.membership.role, "staff_access.view"):
            tenant = access.tenant
            # Counted only when a page shows the badge.
            request.staff_access_pending = SimpleLazyObject(  # type: ignore[attr-defined]
                lambda: access_requests_pending_count(tenant=tenant)
            )
        declaration = route_declaration(view_func)

        if access.tenant.is_suspended and not getattr(declaration, "allowed_when_suspended", False):
            if api:
                return json_error(403, "tenant_suspended", "This tenant is suspended.")
            if request.method in ("GET", "HEAD"):
                return redirect("tenant-suspended", tenant_slug=slug)
            raise PermissionDenied("This tenant is suspended.")

        if (
            access.tenant.require_two_factor
            and getattr(request, "api_key", None) is None
            and not request.user.is_verified()  # type: ignore[union-attr,attr-defined]
            and not getattr(declaration, "allowed_before_two_factor", False)
        ):
            if api:
                return json_error(403, "two_factor_required", "This tenant requires two-factor authentication.")
            return redirect("two-factor-setup")

        method = request.method or "GET"
        permission = required_permission(view_func, method)
        allowed = access.allows(permission, method)
        if access.grant is not None:
            actor = actor_from_request(request)
            if allowed:
                staff_access_used(actor=actor, grant=access.grant, path=request.path, method=method)
            else:
                staff_access_denied(
                    actor=actor,
                    tenant=access.tenant,
                    grant=access.grant,
                    path=request.path,
                    method=method,
                    reason="not_covered",
                )
                if api:
                    return json_error(403, "permission_denied", "Your access grant does not cover this.")
                raise PermissionDenied("Your access grant does not cover this.")
        if not allowed:
            if api:
                return json_error(403, "permission_denied", "Your role does not allow this.")
            raise PermissionDenied("Your role does not allow this.")
        return None
