"""Demo data for the embedded set-up: one tenant and its owner, whose password is new on every start."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import transaction

from tenants.audit import Actor, audit_record
from tenants.models import Membership, Tenant
from tenants.roles import Role
from tenants.services import tenant_create

DEMO_TENANT_SLUG = "demo"
DEMO_TENANT_NAME = "Demo Reseller"
DEMO_OWNER_USERNAME = "demo-owner"
DEMO_OWNER_EMAIL = "owner@demo.invalid"
DEMO_ACTOR = Actor(label="demo set-up", role="system")


@dataclass(frozen=True)
class DemoLogin:
    tenant: Tenant
    username: str
    password: str
    # False when the owner existed already and only the password was replaced.
    owner_created: bool


def demo_password() -> str:
    """Return a fresh random password (about 100 bits): never a fixed one, even for a demo."""
    return "-".join(secrets.token_urlsafe(6) for _ in range(3))


@transaction.atomic
def demo_prepare() -> DemoLogin:
    """Create the demo tenant and its owner if missing, and give the owner a new random password."""
    tenant = Tenant.objects.filter(slug=DEMO_TENANT_SLUG).first()
    if tenant is None:
        tenant = tenant_create(actor=DEMO_ACTOR, slug=DEMO_TENANT_SLUG, name=DEMO_TENANT_NAME)

    password = demo_password()
    user_model = get_user_model()
    owner = user_model.objects.filter(username=DEMO_OWNER_USERNAME).first()
    owner_created = owner is None
    if owner is None:
        owner = user_model.objects.create_user(username=DEMO_OWNER_USERNAME, email=DEMO_OWNER_EMAIL, password=password)
    else:
        owner.set_password(password)
        owner.is_active = True
        owner.save(update_fields=["password", "is_active"])
        audit_record(
            actor=DEMO_ACTOR,
            tenant=tenant,
            action="account.password_reset",
            target=owner,
            after={"user": owner.get_username()},
        )
        _forget_failed_logins(owner.get_username())

    membership, membership_created = Membership.objects.get_or_create(
        tenant=tenant, user=owner, defaults={"role": Role.OWNER}
    )
    if membership_created or membership.role != Role.OWNER:
        before = None if membership_created else {"user": owner.get_username(), "role": membership.role}
        membership.role = Role.OWNER
        membership.save(update_fields=["role"])
        audit_record(
            actor=DEMO_ACTOR,
            tenant=tenant,
            action="team.member_added" if membership_created else "team.role_changed",
            target=membership,
            before=before,
            after={"user": owner.get_username(), "role": Role.OWNER.value},
        )
    return DemoLogin(tenant=tenant, username=owner.get_username(), password=password, owner_created=owner_created)


def _forget_failed_logins(username: str) -> None:
    """Lift a lockout left by earlier failed attempts, so that the new password works at once."""
    from axes.utils import reset

    reset(username=username)
