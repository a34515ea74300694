"""How routes declare what they need. The checks themselves run in tenants.middleware.

A route under a tenant must say which permission it needs to read (GET, HEAD, OPTIONS) and which to
write (every other method). A route that says nothing is refused: access is denied by default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django.http import HttpRequest

from tenants.models import ApiKey, Membership, Tenant

View = TypeVar("View", bound=Callable[..., Any])

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class TenantHttpRequest(HttpRequest):
    """The request a tenant route receives: TenantMiddleware has resolved these attributes."""

    tenant: Tenant
    membership: Membership
    api_key: ApiKey | None


def tenant_route(*, read: str | None = None, write: str | None = None, **flags: bool) -> Callable[[View], View]:
    """Declare the permissions a tenant page needs; `None` leaves that kind of request refused.

    Flags: `allowed_when_suspended` (the suspended notice), `allowed_before_two_factor` (pages a
    person needs to enrol when the tenant requires two-factor authentication).
    """

    def decorate(view: View) -> View:
        view.read_permission = read  # type: ignore[attr-defined]
        view.write_permission = write  # type: ignore[attr-defined]
        for name, value in flags.items():
            setattr(view, name, value)
        return view

    return decorate


def route_declaration(view_func: Callable[..., Any]) -> Any:
    """Return the object that carries a route's declarations: the view class, or the function."""
    return getattr(view_func, "cls", None) or getattr(view_func, "view_class", None) or view_func


def required_permission(view_func: Callable[..., Any], method: str) -> str | None:
    declaration = route_declaration(view_func)
    if method in SAFE_METHODS:
        return getattr(declaration, "read_permission", None)
    return getattr(declaration, "write_permission", None)


def is_api_request(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")
