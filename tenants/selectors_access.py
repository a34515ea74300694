"""Reads for consent-gated staff access: which grant lets a staff member into a tenant, and what it
covers. The rules are in docs/staff-access.md."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Q, QuerySet
from django.http import Http404
from django.utils import timezone

from tenants.models import AuditEvent, Tenant
from tenants.models_access import AccessPolicy, AccessRequest

# What each area of a grant lets staff read, and what it adds when the grant allows writes. Team
# management, security policy, API keys and staff access itself are never granted to staff.
AREA_READ_PERMISSIONS: dict[str, frozenset[str]] = {
    "devices": frozenset({"devices.view"}),
    "accounts": frozenset({"accounts.view"}),
    # Job history is shown on device pages.
    "jobs": frozenset({"devices.view"}),
    "settings": frozenset({"settings.view"}),
    "team": frozenset({"team.view"}),
    "audit": frozenset({"audit.view"}),
}
AREA_WRITE_PERMISSIONS: dict[str, frozenset[str]] = {
    "devices": frozenset({"devices.command", "devices.manage"}),
    "accounts": frozenset({"accounts.manage"}),
    "settings": frozenset({"settings.change"}),
}
ALWAYS_GRANTED = frozenset({"tenant.view"})
# The role recorded for staff acting inside a tenant through a grant (never a real membership).
STAFF_GRANT_ROLE = "platform_staff"
CONSENT_LOG_PREFIX = "staff_access."


class StaffAccessDenied(Http404):
    """A staff member has no live grant in an existing tenant: a 404 that the middleware logs."""

    def __init__(self, tenant: Tenant) -> None:
        super().__init__("No access grant.")
        self.tenant = tenant


def grant_permissions(*, areas: list[str], write: bool) -> frozenset[str]:
    """Return the permissions a grant of `areas` holds; an empty scope holds only tenant.view."""
    permissions = set(ALWAYS_GRANTED)
    for area in areas:
        permissions |= AREA_READ_PERMISSIONS.get(area, frozenset())
        if write:
            permissions |= AREA_WRITE_PERMISSIONS.get(area, frozenset())
    return frozenset(permissions)


def grant_allows(*, grant: AccessRequest, permission: str | None, safe_method: bool) -> bool:
    """Return whether a live grant covers a request; a read-only grant refuses every unsafe method."""
    if permission is None or (not safe_method and not grant.granted_write):
        return False
    return permission in grant_permissions(areas=grant.granted_areas, write=grant.granted_write)


def grant_live_for(*, user, tenant: Tenant, now: datetime | None = None) -> AccessRequest | None:
    """Return the staff member's approved, unexpired grant in the tenant (the latest ending), or None."""
    now = now or timezone.now()
    return (
        AccessRequest.objects.filter(
            tenant=tenant,
            requester=user,
            state__in=AccessRequest.LIVE_STATES,
            starts_at__lte=now,
            expires_at__gt=now,
        )
        .order_by("-expires_at", "-id")
        .first()
    )


def access_policy_get(*, tenant: Tenant) -> AccessPolicy:
    """Return the tenant's policy; a tenant that never set one gets the defaults (unsaved)."""
    policy = AccessPolicy.objects.filter(tenant=tenant).first()
    return policy if policy is not None else AccessPolicy(tenant=tenant)


def access_requests_pending(*, tenant: Tenant) -> QuerySet[AccessRequest]:
    return AccessRequest.objects.filter(tenant=tenant, state=AccessRequest.State.REQUESTED).select_related(
        "requester", "second_staff_approver"
    )


def access_requests_pending_count(*, tenant: Tenant) -> int:
    return AccessRequest.objects.filter(
        tenant=tenant, state=AccessRequest.State.REQUESTED, lapses_at__gt=timezone.now()
    ).count()


def access_grants_live(*, tenant: Tenant) -> QuerySet[AccessRequest]:
    return AccessRequest.objects.filter(
        tenant=tenant, state__in=AccessRequest.LIVE_STATES, expires_at__gt=timezone.now()
    ).select_related("requester", "approver", "second_staff_approver")


def access_requests_of_tenant(*, tenant: Tenant) -> QuerySet[AccessRequest]:
    return AccessRequest.objects.filter(tenant=tenant).select_related("requester", "approver", "revoked_by")


def access_request_get(*, tenant: Tenant, request_id: int) -> AccessRequest:
    """Return one of the tenant's access requests, or raise Http404."""
    try:
        return AccessRequest.objects.select_related("requester").get(tenant=tenant, pk=request_id)
    except (AccessRequest.DoesNotExist, ValueError):
        raise Http404 from None


def access_requests_of_requester(*, user) -> QuerySet[AccessRequest]:
    return AccessRequest.objects.filter(requester=user).select_related("tenant", "approver", "second_staff_approver")


def access_request_get_for_requester(*, user, request_id: int) -> AccessRequest:
    try:
        return AccessRequest.objects.select_related("tenant").get(requester=user, pk=request_id)
    except (AccessRequest.DoesNotExist, ValueError):
        raise Http404 from None


def break_glass_requests_awaiting_second_staff(*, user) -> QuerySet[AccessRequest]:
    """Return other staff members' pending break-glass requests, which `user` may approve."""
    return (
        AccessRequest.objects.filter(
            break_glass=True, state=AccessRequest.State.REQUESTED, lapses_at__gt=timezone.now()
        )
        .exclude(requester=user)
        .select_related("tenant", "requester")
    )


def break_glass_request_get(*, request_id: int) -> AccessRequest:
    try:
        return AccessRequest.objects.select_related("tenant").get(break_glass=True, pk=request_id)
    except (AccessRequest.DoesNotExist, ValueError):
        raise Http404 from None


def consent_log(
    *,
    tenant: Tenant,
    since: datetime | None = None,
    until: datetime | None = None,
    grant_id: int | None = None,
) -> QuerySet[AuditEvent]:
    """Return the tenant's staff access events: every request, decision, use and denied attempt."""
    events = AuditEvent.objects.filter(tenant=tenant, action__startswith=CONSENT_LOG_PREFIX)
    if since:
        events = events.filter(created_at__gte=since)
    if until:
        events = events.filter(created_at__lt=until)
    if grant_id is not None:
        events = events.filter(Q(target_type="accessrequest", target_id=str(grant_id)))
    return events.order_by("-created_at", "-id")
