"""Device registration, token rotation and profile secrets over REST (docs/protocol.md)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from django.test import Client

from devices import keys, services
from devices.models import BackupAccount, Device
from tenants.audit import SYSTEM
from tenants.models import AuditEvent
from tests.devices.conftest import ACCOUNT_PASSWORD

pytestmark = pytest.mark.django_db


def _register(client, **overrides):
    body = {
        "tenant": "acme",
        "username": "alice",
        "l_key": keys.derive_keys("acme", "alice", ACCOUNT_PASSWORD)[0].hex(),
        "device_id": "laptop-0001",
        "name": "Alice's laptop",
        "os": "Linux",
        "timezone": "Europe/Paris",
    }
    body.update(overrides)
    return client.post("/api/device/v1/register/", body, content_type="application/json", REMOTE_ADDR="203.0.113.9")


def test_it_stores_only_a_bcrypt_hash_of_sha512_of_l(account):
    l_key, r_key = keys.derive_keys("acme", "alice", ACCOUNT_PASSWORD)
    stored = BackupAccount.objects.get(pk=account.pk)
    assert stored.login_verifier.startswith("$2b$")
    import bcrypt

    assert bcrypt.checkpw(hashlib.sha512(l_key).digest(), stored.login_verifier.encode())
    row = repr(BackupAccount.objects.filter(pk=account.pk).values().get())
    for secret in (ACCOUNT_PASSWORD, l_key.hex(), r_key.hex()):
        assert secret not in row


def test_it_registers_a_device_and_returns_a_token_once(account):
    response = _register(Client())
    assert response.status_code == 201
    token = response.json()["token"]
    assert len(token) >= 43
    device = Device.objects.get(device_id="laptop-0001")
    assert device.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert device.account == account and device.public_ip == "203.0.113.9" and device.timezone == "Europe/Paris"
    event = AuditEvent.objects.get(action="device.registered")
    assert event.tenant == account.tenant and event.actor_label == "device:laptop-0001"


@pytest.mark.parametrize(
    "overrides",
    [
        {"l_key": "00" * 24},
        {"username": "nobody"},
        {"tenant": "globex"},
        {"tenant": "no-such-tenant"},
    ],
)
def test_it_refuses_bad_credentials_without_saying_which_part_is_wrong(overrides, account, globex):
    response = _register(Client(), **overrides)
    assert response.status_code == 401
    assert response.json() == {"error": {"code": "bad_credentials", "message": "Unknown account or wrong key."}}
    assert not Device.objects.exists()


def test_it_keeps_the_same_username_apart_in_two_tenants(account, globex):
    services.account_create(actor=SYSTEM, tenant=globex.tenant, username="alice", password="globex-password")
    assert _register(Client()).status_code == 201
    globex_key = keys.derive_keys("globex", "alice", "globex-password")[0].hex()
    assert _register(Client(), tenant="globex", l_key=globex_key).status_code == 201
    assert Device.objects.filter(account__tenant=globex.tenant).count() == 1


@pytest.mark.parametrize("device_id", ["short", "has spaces in it", "x" * 65])
def test_it_refuses_a_malformed_device_id(device_id, account):
    response = _register(Client(), device_id=device_id)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid"


def test_it_enforces_max_devices(account):
    account.max_devices = 1
    account.save()
    assert _register(Client()).status_code == 201
    response = _register(Client(), device_id="laptop-0002")
    assert response.status_code == 403 and response.json()["error"]["code"] == "device_limit"


def test_it_refuses_a_device_id_another_account_registered(account):
    services.account_create(actor=SYSTEM, tenant=account.tenant, username="bob", password="bob-password-1")
    assert _register(Client()).status_code == 201
    bob_key = keys.derive_keys("acme", "bob", "bob-password-1")[0].hex()
    response = _register(Client(), username="bob", l_key=bob_key)
    assert response.status_code == 409 and response.json()["error"]["code"] == "device_id_taken"


def test_it_rotates_the_token_when_the_same_device_registers_again(account):
    first = _register(Client()).json()["token"]
    second = _register(Client()).json()["token"]
    assert first != second and Device.objects.count() == 1
    assert services.device_authenticate(token=first) is None
    assert services.device_authenticate(token=second) is not None


def test_it_refuses_a_suspended_account(account):
    account.is_suspended = True
    account.save()
    response = _register(Client())
    assert response.status_code == 403 and response.json()["error"]["code"] == "account_suspended"


def test_it_rotates_a_token_on_request(account):
    token = _register(Client()).json()["token"]
    response = Client().post("/api/device/v1/token/rotate/", headers={"authorization": f"Device {token}"})
    new_token = response.json()["token"]
    assert services.device_authenticate(token=token) is None
    assert services.device_authenticate(token=new_token).device_id == "laptop-0001"
    assert (
        Client().post("/api/device/v1/token/rotate/", headers={"authorization": f"Device {token}"}).status_code == 401
    )


def test_it_keeps_profile_secrets_opaque_and_versioned(account):
    token = _register(Client()).json()["token"]
    client = Client(headers={"authorization": f"Device {token}"})
    assert client.get("/api/device/v1/profile/").json() == {"version": 0, "secrets": ""}
    blob = bytes(range(256))
    encoded = base64.b64encode(blob).decode()
    response = client.put(
        "/api/device/v1/profile/", {"version": 0, "secrets": encoded}, content_type="application/json"
    )
    assert response.json()["version"] == 1
    assert bytes(BackupAccount.objects.get(pk=account.pk).profile_secrets) == blob
    stale = client.put("/api/device/v1/profile/", {"version": 0, "secrets": ""}, content_type="application/json")
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "version_conflict"
    assert client.get("/api/device/v1/profile/").json() == {"version": 1, "secrets": encoded}


def test_it_lets_an_admin_reset_a_password_only_with_the_accounts_consent(account):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        services.account_reset_password(actor=SYSTEM, account=account, password="new-password-1")
    account.profile_secrets = b"wrapped-by-old-R"
    services.account_set_allow_password_reset(account=account, allowed=True)
    services.account_reset_password(actor=SYSTEM, account=account, password="new-password-1")
    account.refresh_from_db()
    assert bytes(account.profile_secrets) == b""
    new_l = keys.derive_keys("acme", "alice", "new-password-1")[0]
    assert keys.login_verifier_matches(new_l, account.login_verifier)


def test_it_accepts_an_l_key_instead_of_a_password(acme):
    l_key = keys.derive_keys("acme", "carol", "never-sent")[0]
    account = services.account_create(actor=SYSTEM, tenant=acme.tenant, username="Carol", l_key_hex=l_key.hex())
    assert account.username == "carol" and keys.login_verifier_matches(l_key, account.login_verifier)


def test_it_refuses_to_register_a_revoked_device_again(account):
    assert _register(Client()).status_code == 201
    services.device_revoke(actor=SYSTEM, device=Device.objects.get(device_id="laptop-0001"))
    response = _register(Client())
    assert response.status_code == 403 and response.json()["error"]["code"] == "device_revoked"
    assert Device.objects.get(device_id="laptop-0001").revoked_at is not None
