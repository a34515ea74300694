"""GDPR requests: erasure (Art. 17) with its steps and recipients, exports (Art. 20), suppression.

The states and rules are described in docs/privacy.md. A request never stores the subject's name
beyond its execution: `subject_label` and `identifiers` are wiped when it completes, and what stays
is a tombstone id.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from tenants.models import Tenant
from tenants.personal_data import SUBJECT_KINDS


class PrivacySettings(models.Model):
    """A tenant's erasure settings; a tenant without a row gets the defaults."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="privacy_settings")
    grace_days = models.PositiveSmallIntegerField(default=7)
    # How long a re-registration under an erased username is refused.
    suppression_days = models.PositiveIntegerField(default=365)


class ErasureRequest(models.Model):
    class State(models.TextChoices):
        RECEIVED = "received", "Received"
        SCHEDULED = "scheduled", "Scheduled (grace period)"
        IN_PROGRESS = "in_progress", "In progress"
        PROPAGATING = "propagating", "Propagating"
        COMPLETED = "completed", "Completed"
        PARTIAL = "partial", "Partial"
        FAILED = "failed", "Failed"
        ON_HOLD = "on_hold", "On hold"
        CANCELLED = "cancelled", "Cancelled"
        REFUSED = "refused", "Refused"

    # Requests no longer counted against their due date.
    CLOSED_STATES = frozenset({State.COMPLETED, State.CANCELLED, State.REFUSED})
    # While in these the subject's data is hidden and frozen (the hold is in force).
    HOLDING_STATES = frozenset(
        {State.SCHEDULED, State.IN_PROGRESS, State.PROPAGATING, State.PARTIAL, State.FAILED, State.ON_HOLD}
    )
    RUNNING_STATES = frozenset({State.IN_PROGRESS, State.PROPAGATING, State.PARTIAL})

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="erasure_requests")
    subject_kind = models.CharField(max_length=16, choices=[(kind, kind) for kind in SUBJECT_KINDS])
    subject_id = models.PositiveBigIntegerField()
    # The subject's name while the request is open, so admins can tell requests apart; wiped at the end.
    subject_label = models.CharField(max_length=200, blank=True)
    tombstone = models.CharField(max_length=40, unique=True)
    # A tenant's offboarding erases each account and team member through a request of its own.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    state = models.CharField(max_length=16, choices=State.choices, default=State.RECEIVED)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    # Who asked (the account holder, a representative...) and how their identity was verified.
    asked_by = models.CharField(max_length=200)
    verification = models.CharField(max_length=500)
    received_at = models.DateTimeField()
    due_at = models.DateTimeField()
    extension_reason = models.CharField(max_length=500, blank=True)
    refusal_reason = models.CharField(max_length=500, blank=True)
    grace_days = models.PositiveSmallIntegerField(default=7)
    grace_until = models.DateTimeField(null=True, blank=True)
    hold_reason = models.CharField(max_length=500, blank=True)
    hold_until = models.DateTimeField(null=True, blank=True)
    state_before_hold = models.CharField(max_length=16, blank=True)
    # What the handlers' hold hooks saved, handed back to them on cancel or refusal.
    saved_state = models.JSONField(default=dict, blank=True)
    # The subject's identifiers, held only while the request executes (see tenants.personal_data).
    identifiers = models.JSONField(default=dict, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The sweeper resumes a running request whose progress stalled, or whose wake-up time came.
    last_progress_at = models.DateTimeField(null=True, blank=True)
    wake_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    # Where the residue scan found the subject's identifiers: [{"table", "column", "rows"}], no values.
    residue = models.JSONField(default=list, blank=True)
    residue_checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [
            models.Index(fields=["tenant", "-received_at", "-id"], name="erasure_tenant_recent"),
            models.Index(fields=["state", "wake_at"], name="erasure_state_wake"),
            models.Index(fields=["tenant", "subject_kind", "subject_id"], name="erasure_subject"),
        ]

    @property
    def is_overdue(self) -> bool:
        from django.utils import timezone

        return self.state not in self.CLOSED_STATES and self.due_at < timezone.now()


class ErasureStepRun(models.Model):
    """One step of a request's execution; `done` is written in the transaction that did the work."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    request = models.ForeignKey(ErasureRequest, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=64)
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    runs = models.PositiveIntegerField(default=0)
    counts = models.JSONField(default=dict, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["request", "position"]
        constraints = [models.UniqueConstraint(fields=["request", "name"], name="erasure_step_once")]


class ErasureRecipientStatus(models.Model):
    """Whether one recipient (the licensing service...) confirmed a request's erasure."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        CONFIRMED = "confirmed", "Confirmed"
        FAILED = "failed", "Failed (retries exhausted)"

    request = models.ForeignKey(ErasureRequest, on_delete=models.CASCADE, related_name="recipients")
    name = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    receipt = models.JSONField(default=dict, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["request", "name"]
        constraints = [models.UniqueConstraint(fields=["request", "name"], name="erasure_recipient_once")]
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="erasure_recipient_due")]


class ErasureSuppression(models.Model):
    """A keyed hash (HMAC with a server key) of an erased username: its re-registration is refused
    until `expires_at`. The name itself is never stored."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    subject_kind = models.CharField(max_length=16)
    key_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "subject_kind", "key_hash"], name="erasure_suppressed_once")
        ]


class DataExport(models.Model):
    """An Art. 20 export: a zip built in the background, downloadable once, then deleted."""

    class State(models.TextChoices):
        PENDING = "pending", "Being built"
        READY = "ready", "Ready"
        DOWNLOADED = "downloaded", "Downloaded (deleted)"
        EXPIRED = "expired", "Expired (deleted)"
        FAILED = "failed", "Failed"
        ERASED = "erased", "Erased with the subject"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    subject_kind = models.CharField(max_length=16, choices=[(kind, kind) for kind in SUBJECT_KINDS])
    subject_id = models.PositiveBigIntegerField()
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    # Kept in the database, like the tenant logo, so that no shared file storage is needed.
    archive = models.BinaryField(default=b"", blank=True, editable=False)
    size_bytes = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField()
    ready_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()
    downloaded_at = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="export_tenant_recent"),
            models.Index(fields=["state", "expires_at"], name="export_state_expiry"),
        ]
