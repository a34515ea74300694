"""Consent-gated staff access: a staff member's request to see a tenant's data, and the tenant's policy.

One AccessRequest row is both the request and, once the tenant approves it, the grant: the grant's id
is the request's id. The rules and states are described in docs/staff-access.md.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models

from tenants.models import Tenant

AREAS = ("devices", "accounts", "jobs", "settings", "team", "audit")
AREA_CHOICES = [(area, area.capitalize()) for area in AREAS]

HARD_MAX_DURATION = timedelta(hours=24)
BREAK_GLASS_MAX_DURATION = timedelta(hours=1)
DEFAULT_DURATION = timedelta(hours=4)
DEFAULT_MAX_DURATION = timedelta(hours=8)
LAPSE_AFTER = timedelta(hours=12)


class AccessPolicy(models.Model):
    """How one tenant answers staff access requests. A tenant without a row gets the defaults."""

    class Approvers(models.TextChoices):
        OWNERS_AND_ADMINS = "owners_and_admins", "Owners and admins"
        OWNERS = "owners", "Owners only"

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="access_policy")
    default_duration = models.DurationField(default=DEFAULT_DURATION)
    max_duration = models.DurationField(default=DEFAULT_MAX_DURATION)
    approvers = models.CharField(max_length=24, choices=Approvers.choices, default=Approvers.OWNERS_AND_ADMINS)
    allow_break_glass = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)


class AccessRequest(models.Model):
    """A staff member's request for time-boxed, scoped access to one tenant; once approved, the grant."""

    class Reason(models.TextChoices):
        CUSTOMER_SUPPORT = "customer_support", "Customer support"
        INCIDENT = "incident", "Incident"
        LEGAL_REQUEST = "legal_request", "Legal request"

    class State(models.TextChoices):
        REQUESTED = "requested", "Requested"
        APPROVED = "approved", "Approved"
        ACTIVE = "active", "Active"
        EXPIRED = "expired", "Expired"
        REVOKED = "revoked", "Revoked"
        COMPLETED = "completed", "Completed"
        DENIED = "denied", "Denied"
        CANCELLED = "cancelled", "Cancelled"
        LAPSED = "lapsed", "Lapsed"

    TERMINAL_STATES = frozenset(
        {State.EXPIRED, State.REVOKED, State.COMPLETED, State.DENIED, State.CANCELLED, State.LAPSED}
    )
    # An approved grant turns "active" on its first use; both may be used until expires_at.
    LIVE_STATES = frozenset({State.APPROVED, State.ACTIVE})

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="access_requests")
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    reason_code = models.CharField(max_length=24, choices=Reason.choices)
    ticket_reference = models.CharField(max_length=100, blank=True)
    # Shown to the tenant as written.
    justification = models.TextField()
    scope_write = models.BooleanField(default=False)
    areas = models.JSONField(default=list)
    requested_duration = models.DurationField(default=DEFAULT_DURATION)
    state = models.CharField(max_length=16, choices=State.choices, default=State.REQUESTED, db_index=True)
    created_at = models.DateTimeField()
    lapses_at = models.DateTimeField()

    approver = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.CharField(max_length=300, blank=True)
    # What the approver granted: never more than was asked.
    granted_write = models.BooleanField(default=False)
    granted_areas = models.JSONField(default=list)
    granted_duration = models.DurationField(null=True, blank=True)
    starts_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    first_used_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    break_glass = models.BooleanField(default=False)
    incident_id = models.CharField(max_length=100, blank=True)
    second_staff_approver = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["tenant", "requester", "state"], name="access_request_lookup")]

    def __str__(self) -> str:
        return f"access request {self.pk} to {self.tenant_id} ({self.state})"

    @property
    def is_terminal(self) -> bool:
        return self.state in self.TERMINAL_STATES

    @property
    def is_live(self) -> bool:
        return self.state in self.LIVE_STATES

    @property
    def scope_label(self) -> str:
        granted = self.granted_duration is not None
        areas = self.granted_areas if granted else self.areas
        write = self.granted_write if granted else self.scope_write
        return f"{'read-write' if write else 'read-only'}: {', '.join(areas) or 'nothing'}"
