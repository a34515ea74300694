from __future__ import annotations

import time

import pytest
from axes.models import AccessAttempt
from django.test import Client
from django_otp.oath import totp
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken

from tenants.models import AuditEvent, AuthenticatorDevice
from tenants.views_account import PENDING_LOGIN_KEY
from tests.conftest import PASSWORD


def authenticator_code(device: AuthenticatorDevice, steps_ahead: int = 0) -> str:
    """Compute the code the person's app shows now (or `steps_ahead` time steps later)."""
    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits, drift=steps_ahead):06d}"


def enrol(user, recovery_codes: tuple[str, ...] = ("aaaabbbb", "ccccdddd")) -> AuthenticatorDevice:
    device = AuthenticatorDevice.objects.create(user=user, name="Authenticator app", confirmed=True)
    static = StaticDevice.objects.create(user=user, name="Recovery codes", confirmed=True)
    for code in recovery_codes:
        static.token_set.create(token=code)
    return device


def signed_in_user_id(client: Client) -> str | None:
    return client.session.get("_auth_user_id")


def password_step(client: Client, username: str, password: str = PASSWORD, **extra):
    return client.post("/login/", {"username": username, "password": password, **extra})


@pytest.fixture
def no_otp_backoff(settings):
    """Turn off django-otp's per-device back-off, to show what the sign-in lockout alone does."""
    settings.OTP_TOTP_THROTTLE_FACTOR = 0
    settings.OTP_STATIC_THROTTLE_FACTOR = 0


def test_it_shows_the_login_page(db):
    response = Client().get("/login/")
    assert response.status_code == 200
    assert b'name="username"' in response.content and b"csrfmiddlewaretoken" in response.content


def test_it_logs_in_with_the_right_password(acme):
    client = Client()
    response = password_step(client, "acme-owner", next="/account/password/")
    assert response.status_code == 302 and response["Location"] == "/account/password/"
    assert signed_in_user_id(client) == str(acme.owner.pk)


def test_it_ignores_a_next_that_leaves_the_site(acme):
    client = Client()
    response = password_step(client, "acme-owner", next="https://evil.example/")
    assert response["Location"] == "/"
    assert signed_in_user_id(client) == str(acme.owner.pk)


def test_it_refuses_a_wrong_password(acme):
    client = Client()
    response = password_step(client, "acme-owner", password="wrong password")
    assert response.status_code == 200
    assert b"do not match" in response.content
    assert signed_in_user_id(client) is None
    assert AccessAttempt.objects.get(username="acme-owner").failures_since_start == 1


def test_it_locks_out_after_five_failures_and_then_refuses_the_right_password(acme):
    client = Client()
    statuses = [password_step(client, "acme-owner", password=f"wrong {n}").status_code for n in range(5)]
    assert statuses == [200, 200, 200, 200, 429]

    response = password_step(client, "acme-owner")
    assert response.status_code == 429
    assert b"Sign-in locked" in response.content
    assert signed_in_user_id(client) is None
    # Someone else, from the same address, is not locked out of their own account.
    assert password_step(Client(), "acme-admin").status_code == 302

    event = AuditEvent.objects.get(action="account.locked_out")
    assert event.tenant == acme.tenant and event.target_id == str(acme.owner.pk)
    assert event.actor is None and event.actor_label == "anonymous"


def test_it_asks_for_a_second_factor_before_signing_in(acme):
    enrol(acme.owner)
    client = Client()
    response = password_step(client, "acme-owner", next="/account/password/")
    assert response.status_code == 302 and response["Location"] == "/login/verify/"
    assert signed_in_user_id(client) is None
    assert client.session[PENDING_LOGIN_KEY]["user_id"] == acme.owner.pk
    # The pending person is not signed in: pages behind login still send them away.
    assert client.get("/account/password/")["Location"].startswith("/login/")


def test_it_signs_in_with_an_authenticator_code(acme):
    device = enrol(acme.owner)
    client = Client()
    password_step(client, "acme-owner", next="/account/password/")
    assert client.get("/login/verify/").status_code == 200

    response = client.post("/login/verify/", {"code": authenticator_code(device)})
    assert response.status_code == 302 and response["Location"] == "/account/password/"
    assert signed_in_user_id(client) == str(acme.owner.pk)
    assert client.session["otp_device_id"] == device.persistent_id  # the session is verified
    assert PENDING_LOGIN_KEY not in client.session


def test_it_refuses_a_wrong_authenticator_code(acme):
    device = enrol(acme.owner)
    client = Client()
    password_step(client, "acme-owner")
    wrong = f"{(int(authenticator_code(device)) + 1) % 1_000_000:06d}"
    response = client.post("/login/verify/", {"code": wrong})
    assert response.status_code == 200
    assert b"not valid" in response.content
    assert signed_in_user_id(client) is None
    assert AccessAttempt.objects.get(username="acme-owner").failures_since_start == 1
    device.refresh_from_db()
    assert device.throttling_failure_count == 1


def test_it_accepts_a_recovery_code_once(acme):
    enrol(acme.owner, recovery_codes=("aaaabbbb", "ccccdddd"))
    first = Client()
    password_step(first, "acme-owner")
    response = first.post("/login/verify/", {"code": "AAAA-BBBB"}, follow=True)
    assert signed_in_user_id(first) == str(acme.owner.pk)
    assert first.session["otp_device_id"] == StaticDevice.objects.get(user=acme.owner).persistent_id
    assert b"1 remain" in response.content
    assert list(StaticToken.objects.values_list("token", flat=True)) == ["ccccdddd"]

    second = Client()
    password_step(second, "acme-owner")
    response = second.post("/login/verify/", {"code": "aaaabbbb"})
    assert response.status_code == 200
    assert signed_in_user_id(second) is None


def test_it_locks_the_second_factor_after_five_wrong_codes(acme, no_otp_backoff):
    device = enrol(acme.owner)
    client = Client()
    password_step(client, "acme-owner")
    statuses = [client.post("/login/verify/", {"code": f"00000{n}"}).status_code for n in range(5)]
    assert statuses == [200, 200, 200, 200, 429]

    # Now the right code is refused, and so is the password: the lock covers the whole sign-in.
    response = client.post("/login/verify/", {"code": authenticator_code(device)})
    assert response.status_code == 429
    assert signed_in_user_id(client) is None
    assert password_step(Client(), "acme-owner").status_code == 429
    assert AccessAttempt.objects.get(username="acme-owner").failures_since_start >= 5
    assert AuditEvent.objects.filter(action="account.locked_out", tenant=acme.tenant).count() == 1


def test_it_slows_down_repeated_wrong_codes_per_device(acme):
    device = enrol(acme.owner)
    client = Client()
    password_step(client, "acme-owner")
    client.post("/login/verify/", {"code": "000000"})
    # Within django-otp's back-off even the right code is refused, with a message saying to wait.
    response = client.post("/login/verify/", {"code": authenticator_code(device)})
    assert b"wait a few seconds" in response.content
    assert signed_in_user_id(client) is None


def test_it_forgets_a_pending_sign_in_after_a_few_minutes(acme):
    device = enrol(acme.owner)
    client = Client()
    password_step(client, "acme-owner")
    session = client.session
    session[PENDING_LOGIN_KEY] = dict(session[PENDING_LOGIN_KEY], expires=time.time() - 1)
    session.save()
    response = client.post("/login/verify/", {"code": authenticator_code(device)})
    assert response.status_code == 302 and response["Location"] == "/login/"
    assert signed_in_user_id(client) is None


def test_it_sends_the_verify_page_without_a_pending_sign_in_to_login(db):
    response = Client().get("/login/verify/")
    assert response.status_code == 302 and response["Location"] == "/login/"


def test_it_logs_out_on_post_only(acme, as_user):
    client = as_user(acme.owner)
    assert client.get("/logout/").status_code == 405
    assert signed_in_user_id(client) == str(acme.owner.pk)
    response = client.post("/logout/")
    assert response.status_code == 302 and response["Location"] == "/login/"
    assert signed_in_user_id(client) is None
