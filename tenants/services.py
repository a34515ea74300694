"""Writes to tenancy: each function changes one thing and records one audit event with it."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from tenants.audit import Actor, audit_record
from tenants.models import ApiKey, Invitation, Membership, Tenant
from tenants.roles import Role

INVITATION_LIFETIME = timedelta(days=7)
LOGO_MAX_BYTES = 256 * 1024
LOGO_TYPES = {"image/png", "image/jpeg", "image/svg+xml", "image/webp"}
API_KEY_PREFIX = "bpk_"


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# --- Tenants (platform staff) ---------------------------------------------------------------


@transaction.atomic
def tenant_create(*, actor: Actor, slug: str, name: str, owner_email: str = "") -> Tenant:
    """Create a tenant and, if an owner e-mail is given, invite its first owner."""
    if Tenant.objects.filter(slug=slug).exists():
        raise ValidationError({"slug": "A tenant with this slug exists."})
    tenant = Tenant(slug=slug, name=name)
    tenant.full_clean()
    tenant.save()
    audit_record(actor=actor, tenant=None, action="tenant.created", target=tenant, after={"slug": slug, "name": name})
    if owner_email:
        invitation_create(actor=actor, tenant=tenant, email=owner_email, role=Role.OWNER)
    return tenant


def _tenant_set_status(*, actor: Actor, tenant: Tenant, status: str, action: str) -> Tenant:
    with transaction.atomic():
        before = tenant.status
        tenant.status = status
        tenant.save(update_fields=["status"])
        for chain_tenant in (None, tenant):
            audit_record(
                actor=actor,
                tenant=chain_tenant,
                action=action,
                target=tenant,
                before={"status": before},
                after={"status": status},
            )
    return tenant


def tenant_suspend(*, actor: Actor, tenant: Tenant) -> Tenant:
    return _tenant_set_status(actor=actor, tenant=tenant, status=Tenant.Status.SUSPENDED, action="tenant.suspended")


def tenant_reactivate(*, actor: Actor, tenant: Tenant) -> Tenant:
    return _tenant_set_status(actor=actor, tenant=tenant, status=Tenant.Status.ACTIVE, action="tenant.reactivated")


# --- Tenant settings ------------------------------------------------------------------------


@transaction.atomic
def tenant_update_settings(
    *,
    actor: Actor,
    tenant: Tenant,
    name: str,
    display_name: str,
    accent_colour: str,
) -> Tenant:
    before = {"name": tenant.name, "display_name": tenant.display_name, "accent_colour": tenant.accent_colour}
    tenant.name, tenant.display_name, tenant.accent_colour = name, display_name, accent_colour
    tenant.full_clean(exclude=["slug"])
    tenant.save(update_fields=["name", "display_name", "accent_colour"])
    after = {"name": name, "display_name": display_name, "accent_colour": accent_colour}
    audit_record(
        actor=actor, tenant=tenant, action="tenant.settings_changed", target=tenant, before=before, after=after
    )
    return tenant


@transaction.atomic
def tenant_set_logo(*, actor: Actor, tenant: Tenant, content: bytes, content_type: str) -> Tenant:
    if content_type not in LOGO_TYPES:
        raise ValidationError({"logo": "Upload a PNG, JPEG, WebP or SVG image."})
    if len(content) > LOGO_MAX_BYTES:
        raise ValidationError({"logo": f"The logo may be at most {LOGO_MAX_BYTES // 1024} KiB."})
    tenant.logo, tenant.logo_content_type = content, content_type
    tenant.save(update_fields=["logo", "logo_content_type"])
    audit_record(actor=actor, tenant=tenant, action="tenant.logo_changed", target=tenant, after={"bytes": len(content)})
    return tenant


@transaction.atomic
def tenant_set_two_factor_policy(*, actor: Actor, tenant: Tenant, required: bool) -> Tenant:
    before = tenant.require_two_factor
    tenant.require_two_factor = required
    tenant.save(update_fields=["require_two_factor"])
    audit_record(
        actor=actor,
        tenant=tenant,
        action="tenant.two_factor_policy_changed",
        target=tenant,
        before={"require_two_factor": before},
        after={"require_two_factor": required},
    )
    return tenant


# --- Team -----------------------------------------------------------------------------------


def _ensure_an_owner_remains(tenant: Tenant, leaving: Membership) -> None:
    owners = Membership.objects.select_for_update().filter(tenant=tenant, role=Role.OWNER).exclude(pk=leaving.pk)
    if leaving.role == Role.OWNER and not owners.exists():
        raise ValidationError("A tenant must keep at least one owner.")


@transaction.atomic
def membership_change_role(*, actor: Actor, membership: Membership, role: str) -> Membership:
    if role not in Role.values:
        raise ValidationError({"role": "Unknown role."})
    if role != Role.OWNER:
        _ensure_an_owner_remains(membership.tenant, membership)
    before = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    audit_record(
        actor=actor,
        tenant=membership.tenant,
        action="team.role_changed",
        target=membership,
        before={"user": membership.user.get_username(), "role": before},
        after={"user": membership.user.get_username(), "role": role},
    )
    return membership


@transaction.atomic
def membership_remove(*, actor: Actor, membership: Membership) -> None:
    _ensure_an_owner_remains(membership.tenant, membership)
    tenant = membership.tenant
    ApiKey.objects.filter(tenant=tenant, user=membership.user, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    audit_record(
        actor=actor,
        tenant=tenant,
        action="team.member_removed",
        target=membership,
        before={"user": membership.user.get_username(), "role": membership.role},
    )
    membership.delete()


@dataclass(frozen=True)
class IssuedInvitation:
    invitation: Invitation
    link: str


@transaction.atomic
def invitation_create(*, actor: Actor, tenant: Tenant, email: str, role: str) -> IssuedInvitation:
    """Create a one-time invitation and e-mail its link (after commit). The token is stored hashed."""
    if role not in Role.values:
        raise ValidationError({"role": "Unknown role."})
    token = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        tenant=tenant,
        email=email,
        role=role,
        token_hash=_sha256(token),
        invited_by=actor.user,
        expires_at=timezone.now() + INVITATION_LIFETIME,
    )
    link = f"{settings.PORTAL_BASE_URL.rstrip('/')}/invitations/{token}/"
    audit_record(
        actor=actor, tenant=tenant, action="team.invited", target=invitation, after={"email": email, "role": role}
    )
    body = render_to_string(
        "emails/invitation.txt", {"tenant": tenant, "role": role, "link": link, "inviter": actor.display}
    )
    # A subject is one header line: a line break in the tenant's name must not break the mail.
    subject = " ".join(f"You are invited to {tenant.title}".split())
    transaction.on_commit(lambda: send_mail(subject, body, None, [email], fail_silently=False))
    return IssuedInvitation(invitation=invitation, link=link)


@transaction.atomic
def invitation_revoke(*, actor: Actor, invitation: Invitation) -> None:
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at"])
    audit_record(
        actor=actor,
        tenant=invitation.tenant,
        action="team.invitation_revoked",
        target=invitation,
        before={"email": invitation.email},
    )


@transaction.atomic
def invitation_accept(*, actor: Actor, invitation: Invitation, user) -> Membership:
    """Turn an open invitation into a membership for `user`; the link cannot be used again."""
    invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if invitation.accepted_at or invitation.revoked_at or invitation.expires_at <= timezone.now():
        raise ValidationError("This invitation is no longer valid.")
    membership, created = Membership.objects.get_or_create(
        tenant=invitation.tenant, user=user, defaults={"role": invitation.role}
    )
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    audit_record(
        actor=Actor(user=user, role=membership.role, ip_address=actor.ip_address, user_agent=actor.user_agent),
        tenant=invitation.tenant,
        action="team.invitation_accepted" if created else "team.invitation_accepted_existing_member",
        target=membership,
        after={"user": user.get_username(), "role": membership.role},
    )
    return membership


def user_create_for_invitation(*, username: str, email: str, password: str):
    """Create the login of an invited person who has none yet."""
    user_model = get_user_model()
    if user_model.objects.filter(username__iexact=username).exists():
        raise ValidationError({"username": "This username is taken."})
    return user_model.objects.create_user(username=username, email=email, password=password)


# --- API keys -------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedApiKey:
    api_key: ApiKey
    raw_key: str


@transaction.atomic
def api_key_create(
    *, actor: Actor, tenant: Tenant, user, name: str, expires_at: datetime | None = None
) -> IssuedApiKey:
    """Create an API key; the raw key is returned once and only its hash is stored."""
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "The expiry must be in the future."})
    raw_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey.objects.create(
        tenant=tenant, user=user, name=name, prefix=raw_key[:12], key_hash=_sha256(raw_key), expires_at=expires_at
    )
    audit_record(
        actor=actor,
        tenant=tenant,
        action="apikey.created",
        target=api_key,
        after={"name": name, "prefix": api_key.prefix, "expires_at": expires_at.isoformat() if expires_at else None},
    )
    return IssuedApiKey(api_key=api_key, raw_key=raw_key)


@transaction.atomic
def api_key_revoke(*, actor: Actor, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        audit_record(
            actor=actor,
            tenant=api_key.tenant,
            action="apikey.revoked",
            target=api_key,
            before={"name": api_key.name, "prefix": api_key.prefix},
        )
    return api_key


def api_key_touch(*, api_key: ApiKey) -> None:
    """Note when a key was last used, at most once a minute so that requests do not each write."""
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at > timedelta(minutes=1):
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
