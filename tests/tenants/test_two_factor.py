from __future__ import annotations

import re
from base64 import b32encode

import pytest
from django.test import Client
from django_otp.oath import totp
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken

from tenants.models import AuditEvent, AuthenticatorDevice, Membership
from tenants.roles import Role
from tests.conftest import PASSWORD

SETUP = "/account/two-factor/"
RECOVERY = "/account/two-factor/recovery/"
DISABLE = "/account/two-factor/disable/"


def authenticator_code(device: AuthenticatorDevice, steps_ahead: int = 0) -> str:
    """Compute the code the person's app shows now (or `steps_ahead` time steps later)."""
    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits, drift=steps_ahead):06d}"


def wrong_code(device: AuthenticatorDevice) -> str:
    return f"{(int(authenticator_code(device)) + 1) % 1_000_000:06d}"


def enrol_through_the_pages(client, user) -> AuthenticatorDevice:
    client.get(SETUP)
    device = AuthenticatorDevice.objects.get(user=user, confirmed=False)
    response = client.post(SETUP, {"code": authenticator_code(device)})
    assert response.status_code == 302 and response["Location"] == RECOVERY
    device.refresh_from_db()
    return device


def shown_recovery_codes(response) -> list[str]:
    block = re.search(rb'data-testid="recovery-codes">(.*?)</ul>', response.content, re.S)
    return re.findall(r"<li>(\w+)</li>", block.group(1).decode()) if block else []


@pytest.fixture
def owner_of_two(acme, globex):
    """Acme's owner, who is also an auditor in globex."""
    Membership.objects.create(tenant=globex.tenant, user=acme.owner, role=Role.AUDITOR)
    return acme.owner


def test_it_needs_login(db):
    for url in (SETUP, RECOVERY):
        assert Client().get(url)["Location"].startswith("/login/")
    assert Client().post(DISABLE)["Location"].startswith("/login/")


def test_it_shows_a_qr_code_and_the_secret_to_enrol(acme, as_user):
    client = as_user(acme.technician)
    response = client.get(SETUP)
    assert response.status_code == 200
    device = AuthenticatorDevice.objects.get(user=acme.technician)
    assert device.confirmed is False
    body = response.content.decode()
    assert "<svg" in body
    assert "<img" not in body.split('data-testid="qr-code"')[1].split("</div>")[0]
    assert b32encode(device.bin_key).decode()[:4] in body
    # Reloading keeps the device whose QR code may already have been scanned.
    client.get(SETUP)
    assert AuthenticatorDevice.objects.filter(user=acme.technician).count() == 1
    assert AuditEvent.objects.filter(action="account.two_factor_enrolment_started").count() == 1


def test_it_turns_on_with_a_correct_code_and_shows_recovery_codes_once(acme, as_user):
    client = as_user(acme.technician)
    device = enrol_through_the_pages(client, acme.technician)
    assert device.confirmed is True
    assert client.session["otp_device_id"] == device.persistent_id

    tokens = set(StaticToken.objects.filter(device__user=acme.technician).values_list("token", flat=True))
    assert len(tokens) == 10
    response = client.get(RECOVERY)
    assert set(shown_recovery_codes(response)) == tokens
    assert shown_recovery_codes(client.get(RECOVERY)) == []
    assert b"10 unused recovery codes" in client.get(SETUP).content


def test_it_refuses_a_wrong_code_when_enrolling(acme, as_user):
    client = as_user(acme.technician)
    client.get(SETUP)
    device = AuthenticatorDevice.objects.get(user=acme.technician)
    response = client.post(SETUP, {"code": wrong_code(device)})
    assert response.status_code == 200
    assert b"does not match" in response.content
    device.refresh_from_db()
    assert device.confirmed is False
    assert not StaticDevice.objects.filter(user=acme.technician).exists()
    assert "otp_device_id" not in client.session
    assert not AuditEvent.objects.filter(action="account.two_factor_enabled").exists()


def test_it_records_enrolment_in_each_of_the_persons_tenants(owner_of_two, acme, globex, as_user):
    enrol_through_the_pages(as_user(owner_of_two), owner_of_two)
    events = AuditEvent.objects.filter(action="account.two_factor_enabled")
    assert {(event.tenant, event.actor_role) for event in events} == {
        (acme.tenant, Role.OWNER),
        (globex.tenant, Role.AUDITOR),
    }
    assert all(event.actor == owner_of_two and event.target_id == str(owner_of_two.pk) for event in events)


def test_it_regenerates_recovery_codes(owner_of_two, acme, globex, as_user):
    client = as_user(owner_of_two)
    enrol_through_the_pages(client, owner_of_two)
    old = set(StaticToken.objects.values_list("token", flat=True))
    client.get(RECOVERY)  # the codes shown once after enrolment

    response = client.post(RECOVERY)
    assert response.status_code == 302
    new = set(StaticToken.objects.values_list("token", flat=True))
    assert len(new) == 10 and not (old & new)
    assert set(shown_recovery_codes(client.get(RECOVERY))) == new
    # The session stays verified: the device it was verified with is kept.
    assert StaticDevice.objects.filter(user=owner_of_two).count() == 1
    events = AuditEvent.objects.filter(action="account.recovery_codes_regenerated")
    assert {event.tenant for event in events} == {acme.tenant, globex.tenant}


def test_it_needs_the_password_and_a_code_to_turn_off(owner_of_two, acme, globex, as_user):
    client = as_user(owner_of_two)
    device = enrol_through_the_pages(client, owner_of_two)
    assert client.get(DISABLE).status_code == 405

    response = client.post(DISABLE, {"password": "not my password", "code": authenticator_code(device, 1)})
    assert b"not your current password" in response.content
    response = client.post(DISABLE, {"password": PASSWORD, "code": wrong_code(device)})
    assert b"not valid" in response.content or b"wait a few seconds" in response.content
    assert AuthenticatorDevice.objects.filter(user=owner_of_two, confirmed=True).exists()
    assert not AuditEvent.objects.filter(action="account.two_factor_disabled").exists()

    AuthenticatorDevice.objects.filter(pk=device.pk).update(
        throttling_failure_count=0, throttling_failure_timestamp=None
    )
    response = client.post(DISABLE, {"password": PASSWORD, "code": authenticator_code(device, 1)})
    assert response.status_code == 302 and response["Location"] == SETUP
    assert not AuthenticatorDevice.objects.filter(user=owner_of_two).exists()
    assert not StaticDevice.objects.filter(user=owner_of_two).exists()
    events = AuditEvent.objects.filter(action="account.two_factor_disabled")
    assert {(event.tenant, event.actor_role) for event in events} == {
        (acme.tenant, Role.OWNER),
        (globex.tenant, Role.AUDITOR),
    }


def test_it_turns_off_with_a_recovery_code(acme, as_user):
    client = as_user(acme.admin)
    enrol_through_the_pages(client, acme.admin)
    code = StaticToken.objects.filter(device__user=acme.admin).first().token
    response = client.post(DISABLE, {"password": PASSWORD, "code": code.upper()})
    assert response.status_code == 302
    assert not AuthenticatorDevice.objects.filter(user=acme.admin).exists()


def test_it_asks_an_unverified_session_for_a_code(acme, as_user):
    device = AuthenticatorDevice.objects.create(user=acme.admin, name="Authenticator app", confirmed=True)
    client = as_user(acme.admin)  # signed in without the second factor, as after enrolling elsewhere
    response = client.get(SETUP)
    assert b"Verify this session" in response.content
    assert client.get(RECOVERY)["Location"] == SETUP

    response = client.post(SETUP, {"code": authenticator_code(device)})
    assert response.status_code == 302
    assert client.session["otp_device_id"] == device.persistent_id
    assert b"Two-factor authentication is on" in client.get(SETUP).content


def test_it_sends_members_of_a_tenant_requiring_two_factor_to_enrol(acme, as_user):
    acme.tenant.require_two_factor = True
    acme.tenant.save(update_fields=["require_two_factor"])
    client = as_user(acme.technician)
    response = client.get("/t/acme/")
    assert response.status_code == 302 and response["Location"] == SETUP

    response = client.get(SETUP)
    assert response.status_code == 200
    assert b"Acme Corporation requires two-factor" in response.content
    enrol_through_the_pages(client, acme.technician)

    response = client.get("/t/acme/")
    assert response.status_code == 200
