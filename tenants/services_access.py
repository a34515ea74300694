"""Consent-gated staff access: every transition of an access request and grant, and the consent log.

Each function checks the transition is allowed, changes the row under a lock, records an audit event
in the tenant's chain (and in the platform chain for what staff do), and sends e-mail and socket
messages only after the transaction commits. States and rules: docs/staff-access.md.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from tenants.audit import SYSTEM, Actor, audit_record
from tenants.models import Membership, Tenant
from tenants.models_access import (
    AREAS,
    BREAK_GLASS_MAX_DURATION,
    HARD_MAX_DURATION,
    LAPSE_AFTER,
    AccessPolicy,
    AccessRequest,
)
from tenants.roles import Role
from tenants.selectors_access import access_policy_get

logger = logging.getLogger(__name__)
State = AccessRequest.State
MIN_DURATION = timedelta(minutes=5)


def grant_group_name(grant_id: int) -> str:
    """Return the channel-layer group that every staff socket using the grant joins."""
    return f"grant.{grant_id}"


# --- Helpers ----------------------------------------------------------------------------------


def _locked(access_request: AccessRequest) -> AccessRequest:
    return AccessRequest.objects.select_for_update().select_related("tenant").get(pk=access_request.pk)


def _minutes(duration: timedelta | None) -> int | None:
    return int(duration.total_seconds() // 60) if duration is not None else None


def _summary(access_request: AccessRequest) -> dict[str, Any]:
    return {
        "state": access_request.state,
        "reason_code": access_request.reason_code,
        "ticket_reference": access_request.ticket_reference,
        "areas": list(access_request.areas),
        "write": access_request.scope_write,
        "requested_minutes": _minutes(access_request.requested_duration),
        "granted_areas": list(access_request.granted_areas),
        "granted_write": access_request.granted_write,
        "granted_minutes": _minutes(access_request.granted_duration),
        "expires_at": access_request.expires_at.isoformat() if access_request.expires_at else None,
        "break_glass": access_request.break_glass,
        "incident_id": access_request.incident_id,
    }


def _record(*, actor: Actor, access_request: AccessRequest, action: str, platform: bool = False, **extra: Any) -> None:
    """Record a transition in the tenant's chain and, for staff-side actions, in the platform chain."""
    after = _summary(access_request) | extra
    audit_record(actor=actor, tenant=access_request.tenant, action=action, target=access_request, after=after)
    if platform:
        audit_record(
            actor=actor,
            tenant=None,
            action=action,
            target=access_request,
            after={"tenant_id": access_request.tenant_id, "state": access_request.state, **extra},
        )


def _require_state(access_request: AccessRequest, *states: str) -> None:
    if access_request.state not in states:
        raise ValidationError(f"This request is {access_request.get_state_display().lower()}: it cannot change.")


def _clean_areas(areas: list[str]) -> list[str]:
    unknown = set(areas) - set(AREAS)
    if unknown or not areas:
        raise ValidationError({"areas": "Choose at least one area, from: " + ", ".join(AREAS) + "."})
    return [area for area in AREAS if area in areas]


def _capped_duration(duration: timedelta, policy: AccessPolicy, *, break_glass: bool) -> timedelta:
    if duration < MIN_DURATION:
        raise ValidationError({"duration": "A grant lasts at least 5 minutes."})
    cap = min(policy.max_duration, HARD_MAX_DURATION)
    if break_glass:
        cap = min(cap, BREAK_GLASS_MAX_DURATION)
    return min(duration, cap)


def _owner_emails(tenant: Tenant, roles: set[str]) -> list[str]:
    members = Membership.objects.filter(tenant=tenant, role__in=roles).select_related("user")
    return sorted({member.user.email for member in members if member.user.email})


def _mail_after_commit(template: str, subject: str, recipients: list[str], context: dict[str, Any]) -> None:
    if not recipients:
        return
    body = render_to_string(template, context)
    # A subject is one header line: a line break in a tenant's name must not break the mail.
    subject = " ".join(subject.split())
    transaction.on_commit(lambda: send_mail(subject, body, None, recipients, fail_silently=True))


def _close_sockets_after_commit(grant_id: int) -> None:
    def send() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            async_to_sync(layer.group_send)(grant_group_name(grant_id), {"type": "grant.closed"})
        except Exception as error:  # the grant is already over: a socket left open is refused on its next check
            logger.warning("Closing the sockets of grant %s failed: %s", grant_id, error)

    transaction.on_commit(send)


def _approver_roles(policy: AccessPolicy) -> set[str]:
    if policy.approvers == AccessPolicy.Approvers.OWNERS:
        return {Role.OWNER}
    return {Role.OWNER, Role.ADMIN}


# --- Policy -----------------------------------------------------------------------------------


@transaction.atomic
def access_policy_update(
    *,
    actor: Actor,
    tenant: Tenant,
    default_duration: timedelta,
    max_duration: timedelta,
    approvers: str,
    allow_break_glass: bool,
) -> AccessPolicy:
    """Change how the tenant answers staff access requests (owners only, checked by the route)."""
    if approvers not in AccessPolicy.Approvers.values:
        raise ValidationError({"approvers": "Unknown choice."})
    if not MIN_DURATION <= max_duration <= HARD_MAX_DURATION:
        raise ValidationError({"max_duration": "The longest grant is between 5 minutes and 24 hours."})
    if not MIN_DURATION <= default_duration <= max_duration:
        raise ValidationError({"default_duration": "The usual length must not exceed the longest grant."})
    policy = access_policy_get(tenant=tenant)
    before = {
        "default_minutes": _minutes(policy.default_duration),
        "max_minutes": _minutes(policy.max_duration),
        "approvers": policy.approvers,
        "allow_break_glass": policy.allow_break_glass,
    }
    policy.default_duration, policy.max_duration = default_duration, max_duration
    policy.approvers, policy.allow_break_glass = approvers, allow_break_glass
    policy.save()
    after = {
        "default_minutes": _minutes(default_duration),
        "max_minutes": _minutes(max_duration),
        "approvers": approvers,
        "allow_break_glass": allow_break_glass,
    }
    audit_record(
        actor=actor, tenant=tenant, action="staff_access.policy_changed", target=policy, before=before, after=after
    )
    return policy


# --- Requests ---------------------------------------------------------------------------------


def _create(
    *,
    actor: Actor,
    tenant: Tenant,
    reason_code: str,
    ticket_reference: str,
    justification: str,
    areas: list[str],
    scope_write: bool,
    requested_duration: timedelta | None,
    break_glass: bool = False,
    incident_id: str = "",
) -> AccessRequest:
    user = actor.user
    if user is None or not user.is_staff:
        raise ValidationError("Only platform staff request access to a tenant.")
    if reason_code not in AccessRequest.Reason.values:
        raise ValidationError({"reason_code": "Unknown reason."})
    if not justification.strip():
        raise ValidationError({"justification": "Say why you need access: the tenant reads this."})
    policy = access_policy_get(tenant=tenant)
    duration = _capped_duration(requested_duration or policy.default_duration, policy, break_glass=break_glass)
    now = timezone.now()
    return AccessRequest.objects.create(
        tenant=tenant,
        requester=user,
        reason_code=reason_code,
        ticket_reference=ticket_reference.strip(),
        justification=justification.strip(),
        areas=_clean_areas(areas),
        scope_write=scope_write,
        requested_duration=duration,
        created_at=now,
        lapses_at=now + LAPSE_AFTER,
        break_glass=break_glass,
        incident_id=incident_id.strip(),
    )


@transaction.atomic
def access_request_create(
    *,
    actor: Actor,
    tenant: Tenant,
    reason_code: str,
    ticket_reference: str,
    justification: str,
    areas: list[str],
    scope_write: bool = False,
    requested_duration: timedelta | None = None,
) -> AccessRequest:
    """Ask the tenant for access; its approvers are told by e-mail and on their Staff access page."""
    access_request = _create(
        actor=actor,
        tenant=tenant,
        reason_code=reason_code,
        ticket_reference=ticket_reference,
        justification=justification,
        areas=areas,
        scope_write=scope_write,
        requested_duration=requested_duration,
    )
    _record(actor=actor, access_request=access_request, action="staff_access.requested", platform=True)
    policy = access_policy_get(tenant=tenant)
    _mail_after_commit(
        "emails/access_requested.txt",
        f"Platform staff ask for access to {tenant.title}",
        _owner_emails(tenant, _approver_roles(policy)),
        {"tenant": tenant, "access_request": access_request, "requester": actor.display},
    )
    return access_request


@transaction.atomic
def access_request_approve(
    *,
    actor: Actor,
    access_request: AccessRequest,
    duration: timedelta | None = None,
    areas: list[str] | None = None,
    scope_write: bool | None = None,
) -> AccessRequest:
    """Approve a pending request, optionally shorter, narrower or read-only; the grant starts now.

    The approver is an owner (or admin, if the policy says so) of the tenant, and never the requester.
    """
    access_request = _locked(access_request)
    _require_state(access_request, State.REQUESTED)
    now = timezone.now()
    if access_request.lapses_at <= now:
        raise ValidationError("This request went unanswered too long and has lapsed.")
    user = actor.user
    if user is None or user.pk == access_request.requester_id:
        raise ValidationError("Nobody approves their own request.")
    tenant = access_request.tenant
    policy = access_policy_get(tenant=tenant)
    if not Membership.objects.filter(tenant=tenant, user=user, role__in=_approver_roles(policy)).exists():
        raise ValidationError("Your role cannot approve staff access in this tenant.")
    granted_areas = _clean_areas(access_request.areas if areas is None else areas)
    if not set(granted_areas) <= set(access_request.areas):
        raise ValidationError({"areas": "A grant covers no more areas than were requested."})
    granted_write = access_request.scope_write if scope_write is None else scope_write
    if granted_write and not access_request.scope_write:
        raise ValidationError({"scope_write": "A grant allows no writes when only reading was requested."})
    granted_duration = min(
        access_request.requested_duration,
        _capped_duration(duration or access_request.requested_duration, policy, break_glass=access_request.break_glass),
    )
    access_request.state = State.APPROVED
    access_request.approver = user
    access_request.decided_at = now
    access_request.granted_areas = granted_areas
    access_request.granted_write = granted_write
    access_request.granted_duration = granted_duration
    access_request.starts_at = now
    access_request.expires_at = now + granted_duration
    access_request.save(
        update_fields=[
            "state",
            "approver",
            "decided_at",
            "granted_areas",
            "granted_write",
            "granted_duration",
            "starts_at",
            "expires_at",
        ]
    )
    _record(actor=actor, access_request=access_request, action="staff_access.approved", platform=True)
    return access_request


@transaction.atomic
def access_request_deny(*, actor: Actor, access_request: AccessRequest, note: str = "") -> AccessRequest:
    """Refuse a pending request: any owner or admin of the tenant may, whoever approves by policy."""
    access_request = _locked(access_request)
    _require_state(access_request, State.REQUESTED)
    user = actor.user
    if user is None or user.pk == access_request.requester_id:
        raise ValidationError("Cancel your own request instead.")
    if not Membership.objects.filter(
        tenant=access_request.tenant, user=user, role__in=(Role.OWNER, Role.ADMIN)
    ).exists():
        raise ValidationError("Your role cannot answer staff access requests in this tenant.")
    access_request.state = State.DENIED
    access_request.approver = user
    access_request.decided_at = timezone.now()
    access_request.decision_note = note[:300]
    access_request.save(update_fields=["state", "approver", "decided_at", "decision_note"])
    _record(actor=actor, access_request=access_request, action="staff_access.request_denied", platform=True)
    return access_request


@transaction.atomic
def access_request_cancel(*, actor: Actor, access_request: AccessRequest) -> AccessRequest:
    """Withdraw a pending request: only its requester may."""
    access_request = _locked(access_request)
    if actor.user is None or actor.user.pk != access_request.requester_id:
        raise ValidationError("Only the requester cancels a request.")
    _require_state(access_request, State.REQUESTED)
    access_request.state = State.CANCELLED
    access_request.ended_at = timezone.now()
    access_request.save(update_fields=["state", "ended_at"])
    _record(actor=actor, access_request=access_request, action="staff_access.cancelled", platform=True)
    return access_request


# --- Grants -----------------------------------------------------------------------------------


def _end_grant(*, actor: Actor, grant: AccessRequest, state: str, action: str, platform: bool) -> AccessRequest:
    grant.state = state
    grant.ended_at = timezone.now()
    grant.save(update_fields=["state", "ended_at", "revoked_by"])
    _record(actor=actor, access_request=grant, action=action, platform=platform)
    _close_sockets_after_commit(grant.pk)
    return grant


@transaction.atomic
def access_grant_revoke(*, actor: Actor, grant: AccessRequest) -> AccessRequest:
    """End a grant at once, by a tenant owner or admin; the staff member's sockets close now."""
    grant = _locked(grant)
    _require_state(grant, *AccessRequest.LIVE_STATES)
    user = actor.user
    if (
        user is None
        or not Membership.objects.filter(tenant=grant.tenant, user=user, role__in=(Role.OWNER, Role.ADMIN)).exists()
    ):
        raise ValidationError("Your role cannot revoke staff access in this tenant.")
    grant.revoked_by = user
    _end_grant(actor=actor, grant=grant, state=State.REVOKED, action="staff_access.revoked", platform=True)
    _mail_after_commit(
        "emails/access_ended.txt",
        f"Staff access to {grant.tenant.title} was revoked",
        _owner_emails(grant.tenant, {Role.OWNER}),
        {"tenant": grant.tenant, "grant": grant, "how": f"revoked by {actor.display}"},
    )
    return grant


@transaction.atomic
def access_grant_complete(*, actor: Actor, grant: AccessRequest) -> AccessRequest:
    """End a grant early, by the staff member who holds it."""
    grant = _locked(grant)
    if actor.user is None or actor.user.pk != grant.requester_id:
        raise ValidationError("Only the staff member who holds a grant completes it.")
    _require_state(grant, *AccessRequest.LIVE_STATES)
    return _end_grant(actor=actor, grant=grant, state=State.COMPLETED, action="staff_access.completed", platform=True)


def access_lapse_and_expire() -> int:
    """Lapse requests nobody answered in time and expire grants past their end; return how many."""
    now = timezone.now()
    changed = 0
    due = AccessRequest.objects.filter(state=State.REQUESTED, lapses_at__lte=now).values_list("pk", flat=True)
    for pk in list(due):
        with transaction.atomic():
            access_request = AccessRequest.objects.select_for_update().select_related("tenant").get(pk=pk)
            if access_request.state != State.REQUESTED or access_request.lapses_at > now:
                continue
            access_request.state = State.LAPSED
            access_request.ended_at = now
            access_request.save(update_fields=["state", "ended_at"])
            _record(actor=SYSTEM, access_request=access_request, action="staff_access.lapsed", platform=True)
            changed += 1
    ended = AccessRequest.objects.filter(state__in=AccessRequest.LIVE_STATES, expires_at__lte=now)
    for pk in list(ended.values_list("pk", flat=True)):
        with transaction.atomic():
            grant = AccessRequest.objects.select_for_update().select_related("tenant").get(pk=pk)
            if grant.state not in AccessRequest.LIVE_STATES or grant.expires_at is None or grant.expires_at > now:
                continue
            _end_grant(actor=SYSTEM, grant=grant, state=State.EXPIRED, action="staff_access.expired", platform=True)
            _mail_after_commit(
                "emails/access_ended.txt",
                f"Staff access to {grant.tenant.title} has expired",
                _owner_emails(grant.tenant, {Role.OWNER}),
                {"tenant": grant.tenant, "grant": grant, "how": "expired"},
            )
            changed += 1
    return changed


# --- Break-glass ------------------------------------------------------------------------------


@transaction.atomic
def break_glass_request(
    *,
    actor: Actor,
    tenant: Tenant,
    incident_id: str,
    justification: str,
    areas: list[str],
    scope_write: bool = False,
    requested_duration: timedelta | None = None,
) -> AccessRequest:
    """Ask for emergency access during an incident; a second staff member approves it (at most 1 h).

    Only tenants whose policy allows break-glass can be entered this way; the tenant's owners are
    told at once, and may still revoke the grant.
    """
    if not incident_id.strip():
        raise ValidationError({"incident_id": "Break-glass access needs an incident id."})
    if not access_policy_get(tenant=tenant).allow_break_glass:
        raise ValidationError("This tenant does not allow break-glass access.")
    access_request = _create(
        actor=actor,
        tenant=tenant,
        reason_code=AccessRequest.Reason.INCIDENT,
        ticket_reference=incident_id,
        justification=justification,
        areas=areas,
        scope_write=scope_write,
        requested_duration=requested_duration or BREAK_GLASS_MAX_DURATION,
        break_glass=True,
        incident_id=incident_id,
    )
    _record(actor=actor, access_request=access_request, action="staff_access.break_glass_requested", platform=True)
    _mail_after_commit(
        "emails/access_break_glass.txt",
        f"BREAK-GLASS: platform staff ask for emergency access to {tenant.title}",
        _owner_emails(tenant, {Role.OWNER, Role.ADMIN}),
        {"tenant": tenant, "access_request": access_request, "requester": actor.display, "approved": False},
    )
    return access_request


@transaction.atomic
def break_glass_approve(*, actor: Actor, access_request: AccessRequest) -> AccessRequest:
    """Approve another staff member's break-glass request as the second staff member; starts now."""
    access_request = _locked(access_request)
    if not access_request.break_glass:
        raise ValidationError("Only break-glass requests are approved by staff.")
    _require_state(access_request, State.REQUESTED)
    now = timezone.now()
    if access_request.lapses_at <= now:
        raise ValidationError("This request has lapsed.")
    user = actor.user
    if user is None or not user.is_staff:
        raise ValidationError("A second platform staff member approves break-glass access.")
    if user.pk == access_request.requester_id:
        raise ValidationError("Nobody approves their own request.")
    duration = min(access_request.requested_duration, BREAK_GLASS_MAX_DURATION)
    access_request.state = State.APPROVED
    access_request.second_staff_approver = user
    access_request.decided_at = now
    access_request.granted_areas = list(access_request.areas)
    access_request.granted_write = access_request.scope_write
    access_request.granted_duration = duration
    access_request.starts_at = now
    access_request.expires_at = now + duration
    access_request.save(
        update_fields=[
            "state",
            "second_staff_approver",
            "decided_at",
            "granted_areas",
            "granted_write",
            "granted_duration",
            "starts_at",
            "expires_at",
        ]
    )
    _record(actor=actor, access_request=access_request, action="staff_access.break_glass_approved", platform=True)
    tenant = access_request.tenant
    _mail_after_commit(
        "emails/access_break_glass.txt",
        f"BREAK-GLASS: platform staff have emergency access to {tenant.title}",
        _owner_emails(tenant, {Role.OWNER, Role.ADMIN}),
        {"tenant": tenant, "access_request": access_request, "requester": access_request.requester, "approved": True},
    )
    return access_request


# --- The consent log: each use and each refused attempt ----------------------------------------


@transaction.atomic
def staff_access_used(*, actor: Actor, grant: AccessRequest, path: str, method: str) -> None:
    """Log one request a staff member made inside the tenant through a grant; the first use is told."""
    first_use = grant.first_used_at is None
    if first_use:
        updated = AccessRequest.objects.filter(pk=grant.pk, first_used_at__isnull=True, state=State.APPROVED).update(
            first_used_at=timezone.now(), state=State.ACTIVE
        )
        first_use = updated == 1
        grant.refresh_from_db(fields=["first_used_at", "state"])
    audit_record(
        actor=actor,
        tenant=grant.tenant,
        action="staff_access.used",
        target=grant,
        after={
            "grant_id": grant.pk,
            "path": path[:500],
            "method": method,
            "break_glass": grant.break_glass,
            "write": grant.granted_write,
        },
    )
    if first_use:
        _mail_after_commit(
            "emails/access_used.txt",
            f"Platform staff started using their access to {grant.tenant.title}",
            _owner_emails(grant.tenant, {Role.OWNER}),
            {"tenant": grant.tenant, "grant": grant, "staff": actor.display},
        )


def staff_access_denied(
    *, actor: Actor, tenant: Tenant, grant: AccessRequest | None, path: str, method: str, reason: str
) -> None:
    """Log a staff member's refused attempt to reach the tenant's data."""
    audit_record(
        actor=actor,
        tenant=tenant,
        action="staff_access.denied",
        target_type="accessrequest" if grant is not None else "",
        target_id=str(grant.pk) if grant is not None else "",
        after={"grant_id": grant.pk if grant else None, "path": path[:500], "method": method, "reason": reason},
    )
