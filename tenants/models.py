from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from tenants.roles import Role

hex_colour = RegexValidator(r"^#[0-9a-fA-F]{6}$", "Use a colour like #1f6feb.")


class Tenant(models.Model):
    """One reseller organisation. Every tenant-owned row points here."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    display_name = models.CharField(max_length=200, blank=True)
    accent_colour = models.CharField(max_length=7, default="#1f6feb", validators=[hex_colour])
    # Kept in the database so that no media storage is needed; served by a tenant-scoped view.
    logo = models.BinaryField(blank=True, default=b"", editable=False)
    logo_content_type = models.CharField(max_length=40, blank=True, editable=False)
    require_two_factor = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.slug

    @property
    def title(self) -> str:
        return self.display_name or self.name

    @property
    def is_suspended(self) -> bool:
        return self.status == self.Status.SUSPENDED


class Membership(models.Model):
    """A person's role in one tenant; one person may belong to several tenants."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="one_membership_per_tenant")]

    def __str__(self) -> str:
        return f"{self.user} in {self.tenant} as {self.role}"


class Invitation(models.Model):
    """A one-time link that lets a person join a tenant with a role."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]


class ApiKey(models.Model):
    """A bearer key for the REST API, bound to one admin in one tenant and to that admin's role."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    # The first characters of the key, shown in lists so a person can tell keys apart.
    prefix = models.CharField(max_length=16, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]


class AuditEvent(models.Model):
    """An append-only record of one write or one staff access. Written only by audit_record()."""

    # Null for platform-level events (tenant created, suspended, ...).
    tenant = models.ForeignKey(Tenant, null=True, on_delete=models.PROTECT, related_name="audit_events")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    # Kept apart from `actor` so the record still reads after the person's account is gone.
    actor_label = models.CharField(max_length=150, blank=True)
    actor_role = models.CharField(max_length=32, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(db_index=True)
    # The hash chain (tenants/audit_chain.py): one chain per tenant and one for the platform.
    chain = models.CharField(max_length=32)
    sequence = models.PositiveBigIntegerField()
    previous_hash = models.CharField(max_length=64)
    row_hash = models.CharField(max_length=64)
    # Encoding version 2 hashes the personal fields through salted digests, so an erasure can blank
    # them and drop their salts without breaking the chain (docs/audit.md). Rows before it are 1.
    hash_version = models.PositiveSmallIntegerField(default=2)
    personal_digests = models.JSONField(default=dict, blank=True)
    personal_salts = models.JSONField(default=dict, blank=True)
    personal_erased_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["tenant", "-created_at", "-id"], name="audit_tenant_recent")]
        constraints = [models.UniqueConstraint(fields=["chain", "sequence"], name="audit_one_row_per_link")]

    def save(self, *args: object, **kwargs: object) -> None:
        if self.pk is not None:
            raise RuntimeError("Audit events are append-only.")
        super().save(*args, **kwargs)  # type: ignore[arg-type]

    def delete(self, *args: object, **kwargs: object) -> tuple[int, dict[str, int]]:
        raise RuntimeError("Audit events are append-only.")


class AuditChainHead(models.Model):
    """The last link of one audit chain. Writers lock this row, so a chain never forks."""

    chain = models.CharField(max_length=32, unique=True)
    sequence = models.PositiveBigIntegerField(default=0)
    head_hash = models.CharField(max_length=64)


class AuditDigest(models.Model):
    """A signed statement of a chain's head at a moment: what verify_audit checks the chain against.

    Signed with a key kept outside the database (AUDIT_SIGNING_KEY), so that whoever can rewrite the
    table cannot sign a rewritten history.
    """

    chain = models.CharField(max_length=32, db_index=True)
    sequence = models.PositiveBigIntegerField()
    head_hash = models.CharField(max_length=64)
    signed_at = models.DateTimeField()
    key_id = models.CharField(max_length=16)
    signature = models.CharField(max_length=128)

    class Meta:
        ordering = ["chain", "sequence"]


class ServiceHeartbeat(models.Model):
    """When a background process (Celery worker, beat) last proved it was alive: platform health."""

    service = models.CharField(max_length=32, unique=True)
    last_seen_at = models.DateTimeField()
    detail = models.CharField(max_length=200, blank=True)


# Staff access requests and grants live in their own module; importing them here registers them.
from tenants.models_access import AccessPolicy, AccessRequest  # noqa: E402, F401
from tenants.models_erasure import (  # noqa: E402, F401
    DataExport,
    ErasureRecipientStatus,
    ErasureRequest,
    ErasureStepRun,
    ErasureSuppression,
    PrivacySettings,
)
from tenants.models_two_factor import AuthenticatorDevice  # noqa: E402, F401
