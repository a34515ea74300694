"""Licensing's tables. The portal side keeps its licence and an outbox of usage reports with every
delivery attempt; the service side (licensing.models_service) keeps registered portals and what
they sent. In the embedded "both" role one database holds both sides, which never share a row.
"""

from __future__ import annotations

import uuid

from django.db import models

from tenants.secrets import EncryptedTextField


class PortalLicence(models.Model):
    """This portal's identity towards the licensing service: one row at most.

    The key signs every request to the service (HMAC-SHA256); it is encrypted at rest
    (tenants/secrets.py), so a copy of the database alone cannot sign as this portal.
    """

    serial = models.CharField(max_length=64, unique=True)
    licence_key = EncryptedTextField()
    # Always True, and unique: a second licence row cannot exist, even when two processes race.
    singleton = models.BooleanField(default=True, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.serial


class UsageReport(models.Model):
    """One period's report, stored before it is sent: the outbox row.

    `body` is the gzip of the JSON, exactly the bytes the service receives; the unique constraint on
    (serial, period) keeps a second report for a period out even when two beats run at once or a
    task is retried.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting to be sent"
        DELIVERED = "delivered", "Delivered"
        # The service answered that it will never take this report (e.g. it holds another for the
        # period): kept for the operator, and the outbox moves on.
        REJECTED = "rejected", "Rejected by the service"

    serial = models.CharField(max_length=64)
    period = models.DateField()
    idempotency_key = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    generated_at = models.DateTimeField()
    body = models.BinaryField()
    sha256 = models.CharField(max_length=64)
    size_bytes = models.PositiveBigIntegerField()
    # Tenant pks in the report's order, and each tenant part's [start, end) in the JSON. Never sent:
    # the report names no tenant; these let a tenant admin see the part about their tenant.
    tenant_ids = models.JSONField(default=list)
    tenant_spans = models.JSONField(default=list)
    device_count = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # What the service answered when it stored the report (receipt id, the address it saw, ...).
    receipt = models.JSONField(null=True, blank=True)
    failed_attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # A sender's claim on this row while its request is in flight.
    lease_until = models.DateTimeField(null=True, blank=True)
    # Set when an erasure rewrote the stored body after it was built (see licensing.erasure).
    rewritten_at = models.DateTimeField(null=True, blank=True)
    rewritten_note = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-period"]
        constraints = [models.UniqueConstraint(fields=["serial", "period"], name="one_usage_report_per_period")]
        indexes = [models.Index(fields=["serial", "status", "period"], name="usage_report_outbox")]

    def __str__(self) -> str:
        return f"{self.serial} {self.period}"


class DeliveryAttempt(models.Model):
    """One try to send a report: when, how it ended, what the service said."""

    class Outcome(models.TextChoices):
        DELIVERED = "delivered", "Delivered"
        DUPLICATE = "duplicate", "Delivered (the service had it already)"
        UNREACHABLE = "unreachable", "Service unreachable"
        TIMEOUT = "timeout", "Timed out"
        SERVER_ERROR = "server_error", "Service error"
        REFUSED = "refused", "Refused"

    report = models.ForeignKey(UsageReport, on_delete=models.CASCADE, related_name="attempts")
    attempted_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    detail = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["attempted_at", "id"]


# The service side's tables live in their own module; importing them here registers them.
from licensing.models_service import (  # noqa: E402, F401
    ErasureReceipt,
    ErasureSuppression,
    ReceivedReport,
    RegisteredPortal,
)
