"""The licensing service's tables: registered portals, the reports they sent, erasure receipts.

The service keeps what the allow-list lets a report carry (validated on receipt), the portal's
address as the service saw it, and nothing else about client devices.
"""

from __future__ import annotations

import uuid

from django.db import models

from tenants.secrets import EncryptedTextField


class RegisteredPortal(models.Model):
    """A portal the service bills: its serial and the key its requests are signed with."""

    serial = models.CharField(max_length=64, unique=True)
    # Needed in the clear to check HMAC signatures, so encrypted (not hashed) at rest.
    licence_key = EncryptedTextField()
    name = models.CharField(max_length=200)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # The portal's address as the service sees it (licensing enforcement), from its latest request.
    last_seen_ip = models.GenericIPAddressField(null=True, blank=True)
    last_report_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name", "serial"]

    def __str__(self) -> str:
        return self.serial


class ReceivedReport(models.Model):
    """One report as the service stored it. A second one for the same key or period is refused."""

    portal = models.ForeignKey(RegisteredPortal, on_delete=models.CASCADE, related_name="reports")
    idempotency_key = models.UUIDField()
    period = models.DateField()
    generated_at = models.DateTimeField()
    received_at = models.DateTimeField()
    receipt_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    # gzip of the validated JSON; rewritten only by an erasure.
    body = models.BinaryField()
    sha256 = models.CharField(max_length=64)
    # Billing figures taken from the report when it arrived (the trend chart reads only these).
    devices = models.PositiveIntegerField(default=0)
    devices_with_protected_items = models.PositiveIntegerField(default=0)
    boosters = models.JSONField(default=dict)
    admins = models.PositiveIntegerField(default=0)
    backup_accounts = models.PositiveIntegerField(default=0)
    erased_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["portal", "period"]
        constraints = [
            models.UniqueConstraint(fields=["portal", "idempotency_key"], name="received_report_once_per_key"),
            models.UniqueConstraint(fields=["portal", "period"], name="received_report_once_per_period"),
        ]


class ErasureReceipt(models.Model):
    """Proof that the service pseudonymised a username, answered again for the same reference.

    It holds no username: only the pseudonym that replaced it and what was changed.
    """

    portal = models.ForeignKey(RegisteredPortal, on_delete=models.CASCADE, related_name="erasures")
    reference = models.CharField(max_length=100)
    subject_kind = models.CharField(max_length=32)
    receipt_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    pseudonym = models.CharField(max_length=64)
    erased_at = models.DateTimeField()
    counts = models.JSONField(default=dict)

    class Meta:
        ordering = ["-erased_at"]
        constraints = [models.UniqueConstraint(fields=["portal", "reference"], name="erasure_once_per_reference")]


class ErasureSuppression(models.Model):
    """A keyed hash of an erased username: a report that arrives later is pseudonymised on receipt.

    A report already in flight when the portal asked for the erasure can still carry the name; this
    row, not the name, is what the service keeps to catch it.
    """

    portal = models.ForeignKey(RegisteredPortal, on_delete=models.CASCADE, related_name="suppressions")
    subject_kind = models.CharField(max_length=32)
    username_digest = models.CharField(max_length=64)
    pseudonym = models.CharField(max_length=64)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["portal", "subject_kind", "username_digest"], name="licensing_erasure_suppressed_once"
            )
        ]
