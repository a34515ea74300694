"""Reads of tenant data. Every tenant-owned row is reached through a function here that takes the
tenant, so that a row of another tenant is simply not found (404), never forbidden (403)."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import QuerySet
from django.http import Http404
from django.utils import timezone

from portal.rows import Columns, instances_from_row
from tenants.access import SAFE_METHODS
from tenants.models import ApiKey, AuditEvent, Invitation, Membership, Tenant
from tenants.models_access import AccessRequest
from tenants.roles import role_allows
from tenants.selectors_access import STAFF_GRANT_ROLE, StaffAccessDenied, grant_allows, grant_live_for


@dataclass(frozen=True)
class TenantAccess:
    """A person's way into a tenant: their membership, or, for platform staff, a live access grant.

    A grant acts as a synthetic role (`platform_staff`, never saved) limited to the grant's areas.
    """

    tenant: Tenant
    membership: Membership
    grant: AccessRequest | None = None

    def allows(self, permission: str | None, method: str = "GET") -> bool:
        """Return whether this access holds `permission` for a request with `method`."""
        if self.grant is not None:
            return grant_allows(grant=self.grant, permission=permission, safe_method=method in SAFE_METHODS)
        return permission is not None and role_allows(self.membership.role, permission)


def tenant_access_get(*, user, slug: str, api_key: ApiKey | None = None) -> TenantAccess:
    """Return the user's access to the tenant `slug`, or raise Http404.

    An API key reaches only the tenant it was made for. Platform staff who are not members get in
    only through a live grant the tenant approved, and only from a browser session; without one
    they get StaffAccessDenied (a 404 that names the tenant, so the attempt can be logged).
    """
    if user is None or not user.is_authenticated:
        raise Http404
    if api_key is not None:
        return _api_key_access(api_key, user=user, slug=slug)
    membership = Membership.objects.select_related("tenant").filter(tenant__slug=slug, user=user).first()
    if membership is not None:
        return TenantAccess(tenant=membership.tenant, membership=membership)
    if not user.is_staff:
        raise Http404
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is None:
        raise Http404
    grant = grant_live_for(user=user, tenant=tenant)
    if grant is None:
        raise StaffAccessDenied(tenant)
    return TenantAccess(
        tenant=tenant, membership=Membership(tenant=tenant, user=user, role=STAFF_GRANT_ROLE), grant=grant
    )


def _api_key_access(api_key: ApiKey, *, user, slug: str) -> TenantAccess:
    """An API key reaches only the tenant it was made for, through its holder's membership there;
    never through a staff grant (grants are for browser sessions)."""
    if api_key.tenant.slug != slug or api_key.user_id != user.pk:
        raise Http404
    membership = getattr(api_key, "holder_membership", None)
    if not hasattr(api_key, "holder_membership"):  # a key not read by api_key_authenticate
        membership = Membership.objects.filter(tenant_id=api_key.tenant_id, user=user).first()
    if membership is None:
        raise Http404
    return TenantAccess(tenant=api_key.tenant, membership=membership)


def memberships_for_user(*, user) -> QuerySet[Membership]:
    return Membership.objects.filter(user=user).select_related("tenant").order_by("tenant__name")


def team_list(*, tenant: Tenant) -> QuerySet[Membership]:
    return Membership.objects.filter(tenant=tenant).select_related("user").order_by("user__username")


def membership_get(*, tenant: Tenant, membership_id: int) -> Membership:
    try:
        return Membership.objects.select_related("user").get(tenant=tenant, pk=membership_id)
    except (Membership.DoesNotExist, ValueError):
        raise Http404 from None


def invitations_pending(*, tenant: Tenant) -> QuerySet[Invitation]:
    return Invitation.objects.filter(
        tenant=tenant, accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now()
    ).select_related("invited_by")


def invitation_get(*, tenant: Tenant, invitation_id: int) -> Invitation:
    try:
        return Invitation.objects.get(tenant=tenant, pk=invitation_id)
    except (Invitation.DoesNotExist, ValueError):
        raise Http404 from None


def invitation_by_token(*, token: str) -> Invitation:
    """Return the open invitation for a one-time token, or raise Http404."""
    token_hash = hashlib.sha256(token.encode()).hexdigest()
    try:
        invitation = Invitation.objects.select_related("tenant").get(token_hash=token_hash)
    except Invitation.DoesNotExist:
        raise Http404 from None
    if invitation.accepted_at or invitation.revoked_at or invitation.expires_at <= timezone.now():
        raise Http404
    return invitation


def audit_events(
    *,
    tenant: Tenant,
    action: str = "",
    actor: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.filter(tenant=tenant)
    if action:
        events = events.filter(action__startswith=action)
    if actor:
        events = events.filter(actor_label__icontains=actor)
    if since:
        events = events.filter(created_at__gte=since)
    if until:
        events = events.filter(created_at__lt=until)
    return events.order_by("-created_at", "-id")


def api_keys_of(*, tenant: Tenant, user) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(tenant=tenant, user=user)


def api_key_get(*, tenant: Tenant, user, key_id: int) -> ApiKey:
    try:
        return ApiKey.objects.get(tenant=tenant, user=user, pk=key_id)
    except (ApiKey.DoesNotExist, ValueError):
        raise Http404 from None


@functools.cache
def _api_key_read() -> tuple[tuple[Columns, ...], str]:
    # The tenant's logo stays deferred: every API request reads this row.
    columns = key, user, tenant, membership = (
        Columns(ApiKey, "k"),
        Columns(get_user_model(), "u"),
        Columns(Tenant, "t", skip=("logo",)),
        Columns(Membership, "m"),
    )
    sql = (
        f"SELECT {', '.join(c.select() for c in columns)} FROM {key.table} k "  # noqa: S608 - names from models
        f"JOIN {user.table} u ON u.id = k.user_id JOIN {tenant.table} t ON t.id = k.tenant_id "
        f"LEFT JOIN {membership.table} m ON m.tenant_id = k.tenant_id AND m.user_id = k.user_id "
        "WHERE k.key_hash = %s"
    )
    return columns, sql


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """Return the live API key matching a presented bearer key, or None.

    One statement reads the key, its holder, its tenant and the holder's membership there (None if
    they left the team), which tenant_access_get then uses: every API request needs all four.
    """
    key_hash = hashlib.sha256(raw_key.encode()).hexdigest()
    columns, sql = _api_key_read()
    with connection.cursor() as cursor:
        cursor.execute(sql, [key_hash])
        row = cursor.fetchone()
    if row is None:
        return None
    key, user, tenant, membership = instances_from_row(columns, row)
    assert isinstance(key, ApiKey) and isinstance(tenant, Tenant) and isinstance(user, get_user_model())
    if key.revoked_at is not None or not user.is_active:
        return None
    if key.expires_at is not None and key.expires_at <= timezone.now():
        return None
    key.user, key.tenant = user, tenant
    if isinstance(membership, Membership):
        membership.tenant, membership.user = tenant, user
    key.holder_membership = membership  # type: ignore[attr-defined]
    return key


def tenants_for_platform() -> QuerySet[Tenant]:
    return Tenant.objects.order_by("name")


def tenant_get_for_platform(*, tenant_id: int) -> Tenant:
    try:
        return Tenant.objects.get(pk=tenant_id)
    except (Tenant.DoesNotExist, ValueError):
        raise Http404 from None


def tenant_summary(*, tenant: Tenant) -> dict[str, int]:
    """Return the dashboard's counts for a tenant in a fixed number of queries."""
    since = timezone.now() - timedelta(days=7)
    return {
        "members": Membership.objects.filter(tenant=tenant).count(),
        "pending_invitations": invitations_pending(tenant=tenant).count(),
        "events_last_week": AuditEvent.objects.filter(tenant=tenant, created_at__gte=since).count(),
        "members_with_two_factor": Membership.objects.filter(tenant=tenant, user__totpdevice__confirmed=True)
        .distinct()
        .count(),
    }
