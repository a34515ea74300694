"""Writes (and the few reads they need) about a person's own sign-in: two-factor devices, recovery
codes, lockouts and password changes.

These events concern a person rather than one tenant, so each is recorded in every tenant the person
belongs to (with their role there), so that every tenant's audit log shows it; a person who belongs
to no tenant gets one platform-level event instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django_otp import user_has_device
from django_otp.models import Device
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken

from tenants.audit import Actor, audit_record
from tenants.models import AuditEvent, AuthenticatorDevice
from tenants.selectors import memberships_for_user

RECOVERY_CODE_COUNT = 10
AUTHENTICATOR_DEVICE_NAME = "Authenticator app"
RECOVERY_DEVICE_NAME = "Recovery codes"


def _record_for_person(
    *, actor: Actor, user: Any, action: str, after: dict[str, Any] | None = None, role_per_tenant: bool = True
) -> list[AuditEvent]:
    """Record one event about `user` in each of their tenants, or one platform event if they have none.

    With `role_per_tenant` the actor's role is the person's role in each tenant (the person acted on
    their own account); without it the actor is someone else and keeps the role given.
    """
    memberships = list(memberships_for_user(user=user))
    if not memberships:
        return [audit_record(actor=actor, tenant=None, action=action, target=user, after=after)]
    events = []
    for membership in memberships:
        tenant_actor = dataclasses.replace(actor, role=membership.role) if role_per_tenant else actor
        events.append(
            audit_record(actor=tenant_actor, tenant=membership.tenant, action=action, target=user, after=after)
        )
    return events


# --- Reads ----------------------------------------------------------------------------------
# About the signed-in person only, never tenant data; kept beside the writes that depend on them.


def has_second_factor(*, user: Any) -> bool:
    """Return whether signing in as `user` needs a second factor (a confirmed device of any kind)."""
    return user_has_device(user, confirmed=True)


def authenticator_device(*, user: Any) -> AuthenticatorDevice | None:
    """Return the person's confirmed authenticator-app device, if two-factor authentication is on."""
    return AuthenticatorDevice.objects.filter(user=user, confirmed=True).order_by("id").first()


def recovery_codes_remaining(*, user: Any) -> int:
    return StaticToken.objects.filter(device__user=user, device__confirmed=True).count()


def normalise_code(code: str) -> str:
    """Return a code as stored: people type recovery codes with spaces, dashes or capitals."""
    return "".join(code.split()).replace("-", "").lower()


def _is_authenticator_code(code: str) -> bool:
    return code.isdigit() and len(code) in (6, 8)


def _device_model_for(code: str) -> type[AuthenticatorDevice] | type[StaticDevice]:
    # Only the kind of device the code's shape matches is asked, so a mistyped app code does not
    # count as a failed recovery code (django-otp slows each device down after failures).
    return AuthenticatorDevice if _is_authenticator_code(code) else StaticDevice


def second_factor_verify(*, user: Any, code: str) -> Device | None:
    """Check an authenticator code or a recovery code; return the device that accepted it, or None.

    A recovery code is used up when it matches.
    """
    code = normalise_code(code)
    with transaction.atomic():
        for device in _device_model_for(code).objects.devices_for_user(user, confirmed=True).select_for_update():
            if device.verify_token(code):
                return device
    return None


def second_factor_throttled(*, user: Any, code: str) -> bool:
    """Return whether django-otp refuses such a code for now, after recent failures on the device."""
    devices = _device_model_for(normalise_code(code)).objects.devices_for_user(user, confirmed=True)
    return any(not device.verify_is_allowed()[0] for device in devices)


# --- Two-factor enrolment -------------------------------------------------------------------


@transaction.atomic
def two_factor_enrolment_start(*, actor: Actor, user: Any) -> AuthenticatorDevice:
    """Return the person's unconfirmed authenticator device, creating one if there is none.

    The pending device is reused, so reloading the page keeps the QR code that was already scanned.
    """
    if authenticator_device(user=user) is not None:
        raise ValidationError("Two-factor authentication is already on.")
    device = AuthenticatorDevice.objects.filter(user=user, confirmed=False).order_by("-id").first()
    if device is None:
        device = AuthenticatorDevice.objects.create(user=user, name=AUTHENTICATOR_DEVICE_NAME, confirmed=False)
        _record_for_person(
            actor=actor, user=user, action="account.two_factor_enrolment_started", after={"device": device.name}
        )
    return device


def two_factor_confirm(*, actor: Actor, device: AuthenticatorDevice, code: str) -> list[str] | None:
    """Confirm a pending device with a current code and issue fresh recovery codes.

    Return the recovery codes (shown once), or None when the code is wrong. A wrong code is not an
    exception so that django-otp's count of failures, written while checking, is kept (committed).
    """
    with transaction.atomic():
        device = AuthenticatorDevice.objects.select_for_update().filter(pk=device.pk, confirmed=False).first()
        if device is None:
            raise ValidationError("This enrolment is no longer pending; start again.")
        if not device.verify_token(normalise_code(code)):
            return None
        device.confirmed = True
        device.save(update_fields=["confirmed"])
        AuthenticatorDevice.objects.filter(user=device.user).exclude(pk=device.pk).delete()
        codes = _recovery_codes_replace(user=device.user)
        _record_for_person(
            actor=actor,
            user=device.user,
            action="account.two_factor_enabled",
            after={"device": device.name, "recovery_codes": len(codes)},
        )
    return codes


def _recovery_codes_replace(*, user: Any) -> list[str]:
    # The device is kept, not replaced: the session may have been verified with it, and deleting
    # it would quietly turn that session back into an unverified one.
    device = StaticDevice.objects.filter(user=user).order_by("id").first()
    if device is None:
        device = StaticDevice.objects.create(user=user, name=RECOVERY_DEVICE_NAME, confirmed=True)
    StaticToken.objects.filter(device__user=user).delete()
    codes: set[str] = set()
    while len(codes) < RECOVERY_CODE_COUNT:
        codes.add(StaticToken.random_token())
    StaticToken.objects.bulk_create(StaticToken(device=device, token=code) for code in codes)
    device.throttle_reset()
    return sorted(codes)


@transaction.atomic
def recovery_codes_regenerate(*, actor: Actor, user: Any) -> list[str]:
    """Replace all of the person's recovery codes with new ones; the old ones stop working."""
    if authenticator_device(user=user) is None:
        raise ValidationError("Turn on two-factor authentication first.")
    codes = _recovery_codes_replace(user=user)
    _record_for_person(
        actor=actor, user=user, action="account.recovery_codes_regenerated", after={"recovery_codes": len(codes)}
    )
    return codes


@transaction.atomic
def two_factor_disable(*, actor: Actor, user: Any) -> None:
    """Remove the person's authenticator devices and recovery codes. The caller checks password and code."""
    devices = AuthenticatorDevice.objects.filter(user=user).count()
    AuthenticatorDevice.objects.filter(user=user).delete()
    StaticDevice.objects.filter(user=user).delete()
    _record_for_person(actor=actor, user=user, action="account.two_factor_disabled", after={"devices": devices})


# --- Password and lockouts ------------------------------------------------------------------


def password_changed_record(*, actor: Actor, user: Any) -> None:
    """Record that the person changed their own password (the change itself is Django's)."""
    _record_for_person(actor=actor, user=user, action="account.password_changed")


def login_lockout_record(*, username: str, ip_address: str | None, user_agent: str = "") -> None:
    """Record that sign-in for `username` was locked after repeated failures, if that account exists.

    The one trying is unknown, so the actor is labelled anonymous and the account is the target.
    """
    user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: username}).first()
    if user is None:
        return
    actor = Actor(label="anonymous", ip_address=ip_address, user_agent=user_agent[:300])
    _record_for_person(
        actor=actor, user=user, action="account.locked_out", after={"ip_address": ip_address}, role_per_tenant=False
    )
