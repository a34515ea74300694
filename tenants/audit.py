"""The one place that writes audit events.

Every service that changes something calls audit_record() inside its transaction; the event is
pushed to the tenant's live audit stream only after the transaction commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from portal.outbox import group_send_soon
from tenants.audit_chain import chain_append, chain_name, normalise_ip
from tenants.models import AuditEvent, Tenant
from tenants.net import request_client_ip


@dataclass(frozen=True)
class Actor:
    """Who is acting, in which role, and from where: attached to every audit event."""

    user: Any = None
    role: str = ""
    ip_address: str | None = None
    user_agent: str = ""
    label: str = field(default="")

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        return self.user.get_username() if self.user is not None else "system"


SYSTEM = Actor(label="system", role="system")


def actor_from_request(request: HttpRequest) -> Actor:
    membership = getattr(request, "membership", None)
    if membership is not None:
        role = membership.role
    elif getattr(request.user, "is_staff", False):
        role = "platform_staff"
    else:
        role = ""
    user = request.user if request.user.is_authenticated else None
    return Actor(
        user=user,
        role=role,
        ip_address=request_client_ip(request.META),
        user_agent=request.META.get("HTTP_USER_AGENT", "")[:300],
    )


def audit_group_name(tenant_id: int) -> str:
    return f"tenant.{tenant_id}.audit"


def audit_event_build(
    *,
    actor: Actor,
    tenant: Tenant | None,
    action: str,
    target: Any = None,
    target_type: str = "",
    target_id: str = "",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEvent:
    """Return an unsaved audit event; audit_record() or audit_record_many() links and saves it."""
    if target is not None:
        target_type = target_type or target._meta.model_name
        target_id = target_id or str(target.pk)
    return AuditEvent(
        tenant=tenant,
        chain=chain_name(tenant.pk if tenant is not None else None),
        actor=actor.user,
        actor_label=actor.display[:150],
        actor_role=actor.role,
        action=action,
        target_type=target_type,
        target_id=target_id,
        ip_address=normalise_ip(actor.ip_address),
        user_agent=actor.user_agent[:300],
        before=before,
        after=after,
        created_at=timezone.now(),
    )


def audit_record(
    *,
    actor: Actor,
    tenant: Tenant | None,
    action: str,
    target: Any = None,
    target_type: str = "",
    target_id: str = "",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEvent:
    """Record one audit event, and push it to the tenant's live audit stream after commit."""
    event = audit_event_build(
        actor=actor,
        tenant=tenant,
        action=action,
        target=target,
        target_type=target_type,
        target_id=target_id,
        before=before,
        after=after,
    )
    # No savepoint (two round trips on every audited write): an event that cannot be written
    # rolls back the write it records, so nothing is ever done without its trace.
    with transaction.atomic(savepoint=False):
        chain_append([event])
    if tenant is not None:
        transaction.on_commit(lambda: _push_live(event))
    return event


def audit_record_many(events: list[AuditEvent]) -> list[AuditEvent]:
    """Record many events of one tenant at once (bulk actions): one chain lock, batched inserts."""
    with transaction.atomic():
        chain_append(events)
    return events


def audit_event_as_dict(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.pk,
        "created_at": event.created_at.isoformat(),
        "actor": event.actor_label,
        "actor_role": event.actor_role,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "ip_address": event.ip_address,
    }


def _push_live(event: AuditEvent) -> None:
    # Without waiting for Redis: this runs at the commit of every audited write, before its answer.
    if event.tenant_id is not None:
        group_send_soon(audit_group_name(event.tenant_id), {"type": "audit.event", "event": audit_event_as_dict(event)})
