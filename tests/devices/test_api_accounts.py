"""/api/v1/t/<slug>/accounts/: backup accounts, their vaults, password resets and commands to all their
devices."""

from __future__ import annotations

import secrets

from django.utils import timezone

from devices import keys, services
from devices.models import BackupAccount, Command, StorageVault
from tenants.audit import SYSTEM
from tenants.models import AuditEvent
from tests.devices.test_api import API, make_account, make_device, make_devices
from tests.tenants.test_api import VIA, api_client, error_of

URL = f"{API}/accounts/"


def _verifies(account: BackupAccount, l_key: bytes) -> bool:
    account.refresh_from_db()
    return keys.login_verifier_matches(l_key, account.login_verifier)


@VIA
def test_it_lists_the_tenants_accounts_with_their_device_counts(acme, globex, via):
    alice = make_account(acme, "alice", display_name="Alice Example", max_protected_bytes=10**12)
    make_account(acme, "bob")
    make_account(globex, "gina")
    make_devices(alice, 3)

    response = api_client(acme.auditor, acme.tenant, via).get(URL)

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert [account["username"] for account in body["results"]] == ["alice", "bob"]
    assert body["results"][0] == {
        "id": alice.pk,
        "username": "alice",
        "display_name": "Alice Example",
        "email": "",
        "max_devices": 10,
        "max_protected_bytes": 10**12,
        "allow_admin_password_reset": False,
        "is_suspended": False,
        "device_count": 3,
        "created_at": alice.created_at.isoformat().replace("+00:00", "Z"),
    }


def test_it_searches_accounts_by_username_or_name(acme):
    make_account(acme, "alice")
    make_account(acme, "bob", display_name="Bob from Alicante")
    make_account(acme, "carol")
    client = api_client(acme.owner, acme.tenant, "api_key")

    response = client.get(URL, {"search": "ALIC"})

    assert [account["username"] for account in response.json()["results"]] == ["alice", "bob"]
    assert error_of(client.get(URL, {"search": "x" * 151}), 400)["fields"].keys() == {"search"}


def test_it_lists_accounts_in_a_constant_number_of_queries(acme, django_assert_max_num_queries):
    client = api_client(acme.owner, acme.tenant, "api_key")
    for number in range(10):
        make_devices(make_account(acme, f"user{number}"), 1, start=number)
    with django_assert_max_num_queries(10) as ten:
        assert client.get(URL).json()["count"] == 10

    for number in range(10, 40):
        make_devices(make_account(acme, f"user{number}"), 3, start=100 * number)

    with django_assert_max_num_queries(len(ten.captured_queries)):
        assert client.get(URL).json()["count"] == 40


@VIA
def test_it_makes_an_account_from_a_password(acme, via):
    client = api_client(acme.admin, acme.tenant, via)

    response = client.post(
        URL,
        {
            "username": "Alice@Example.com",
            "password": "correct-horse-1",
            "display_name": "Alice",
            "email": "alice@example.com",
            "max_devices": 3,
            "max_protected_bytes": 5 * 10**9,
            "allow_admin_password_reset": True,
        },
        "application/json",
    )

    assert response.status_code == 201, response.content
    account = BackupAccount.objects.get(tenant=acme.tenant)
    assert response.json() == {
        "id": account.pk,
        "username": "alice@example.com",
        "display_name": "Alice",
        "email": "alice@example.com",
        "max_devices": 3,
        "max_protected_bytes": 5 * 10**9,
        "allow_admin_password_reset": True,
        "is_suspended": False,
        "device_count": 0,
        "created_at": account.created_at.isoformat().replace("+00:00", "Z"),
    }
    l_key, _ = keys.derive_keys("acme", "alice@example.com", "correct-horse-1")
    assert _verifies(account, l_key)
    event = AuditEvent.objects.get(action="account.created")
    assert (event.tenant, event.actor, event.actor_role, event.target_id) == (
        acme.tenant,
        acme.admin,
        "admin",
        str(account.pk),
    )
    assert "correct-horse-1" not in str(event.after)


def test_it_makes_an_account_from_l_so_the_password_never_reaches_the_portal(acme):
    l_key = secrets.token_bytes(keys.KEY_BYTES)
    client = api_client(acme.owner, acme.tenant, "api_key")

    response = client.post(URL, {"username": "bob", "l_key": l_key.hex().upper()}, "application/json")

    assert response.status_code == 201, response.content
    account = BackupAccount.objects.get(username="bob")
    assert _verifies(account, l_key)
    assert (account.max_devices, account.max_protected_bytes, account.allow_admin_password_reset) == (10, 0, False)


def test_it_refuses_an_account_it_cannot_make(acme):
    make_account(acme, "taken")
    client = api_client(acme.owner, acme.tenant, "api_key")
    cases = [
        ({"username": "bob"}, {"password"}),
        ({"username": "bob", "password": "password-1", "l_key": "ab" * 24}, {"password"}),
        ({"username": "bob", "l_key": "ab" * 23}, {"l_key"}),
        ({"username": "bob", "l_key": "zz" * 24}, {"l_key"}),
        ({"username": "bob", "password": "short"}, {"password"}),
        ({"username": "TAKEN", "password": "password-1"}, {"username"}),
        ({"username": "has space", "password": "password-1"}, {"username"}),
        ({"username": "bob", "password": "password-1", "max_devices": -1, "email": "nope"}, {"max_devices", "email"}),
        ({"username": "bob", "password": "password-1", "max_protected_bytes": 2**63}, {"max_protected_bytes"}),
        ({"username": "bob", "password": "password-1", "display_name": "two\nlines"}, {"display_name"}),
    ]

    for body, fields in cases:
        error = error_of(client.post(URL, body, "application/json"), 400)
        assert (error["code"], set(error["fields"])) == ("invalid", fields), body

    assert list(BackupAccount.objects.values_list("username", flat=True)) == ["taken"]
    assert not AuditEvent.objects.filter(action="account.created", actor=acme.owner).exists()


@VIA
def test_it_shows_an_account(acme, via):
    account = make_account(acme, "alice")
    make_devices(account, 2)

    response = api_client(acme.technician, acme.tenant, via).get(f"{URL}{account.pk}/")

    assert response.status_code == 200
    assert (response.json()["username"], response.json()["device_count"]) == ("alice", 2)


@VIA
def test_it_changes_an_accounts_limits_and_keeps_the_fields_left_out(acme, via):
    account = make_account(acme, "alice", display_name="Alice", email="alice@example.com", max_devices=5)
    client = api_client(acme.owner, acme.tenant, via)

    response = client.patch(f"{URL}{account.pk}/", {"max_devices": 7, "email": ""}, "application/json")

    assert response.status_code == 200
    assert (response.json()["max_devices"], response.json()["display_name"]) == (7, "Alice")
    account.refresh_from_db()
    assert (account.display_name, account.email, account.max_devices, account.is_suspended) == ("Alice", "", 7, False)
    event = AuditEvent.objects.get(action="account.updated")
    assert event.actor == acme.owner
    assert (event.before["max_devices"], event.after["max_devices"], event.after["email"]) == (5, 7, "")


def test_it_suspends_and_reactivates_an_account(acme):
    account = make_account(acme, "alice")
    client = api_client(acme.admin, acme.tenant, "api_key")

    suspended = client.patch(f"{URL}{account.pk}/", {"is_suspended": True}, "application/json")
    again = client.patch(f"{URL}{account.pk}/", {"is_suspended": True}, "application/json")

    assert suspended.json()["is_suspended"] is True and again.status_code == 200
    account.refresh_from_db()
    assert account.is_suspended
    assert not AuditEvent.objects.filter(action="account.updated").exists()
    assert AuditEvent.objects.filter(action="account.suspended", actor=acme.admin).count() == 1

    client.patch(f"{URL}{account.pk}/", {"is_suspended": False}, "application/json")

    account.refresh_from_db()
    assert not account.is_suspended
    assert AuditEvent.objects.filter(action="account.reactivated", target_id=str(account.pk)).count() == 1


def test_it_refuses_a_bad_change_and_changes_nothing(acme):
    account = make_account(acme, "alice", max_devices=5)
    client = api_client(acme.owner, acme.tenant, "api_key")

    response = client.patch(f"{URL}{account.pk}/", {"max_devices": 100_001, "is_suspended": True}, "application/json")

    assert set(error_of(response, 400)["fields"]) == {"max_devices"}
    account.refresh_from_db()
    assert (account.max_devices, account.is_suspended) == (5, False)


@VIA
def test_it_resets_a_password_the_account_lets_admins_reset(acme, via):
    account = make_account(acme, "alice", allow_admin_password_reset=True)
    BackupAccount.objects.filter(pk=account.pk).update(profile_secrets=b"wrapped", profile_secrets_version=4)
    client = api_client(acme.owner, acme.tenant, via)

    response = client.post(f"{URL}{account.pk}/reset-password/", {"password": "new-password-1"}, "application/json")

    assert response.status_code == 204
    assert _verifies(account, keys.derive_keys("acme", "alice", "new-password-1")[0])
    assert (bytes(account.profile_secrets), account.profile_secrets_version) == (b"", 5)
    event = AuditEvent.objects.get(action="account.password_reset")
    assert (event.actor, event.target_id) == (acme.owner, str(account.pk))


def test_it_refuses_to_reset_a_password_the_account_keeps_to_itself(acme):
    account = make_account(acme, "alice")
    verifier = account.login_verifier
    client = api_client(acme.owner, acme.tenant, "api_key")

    response = client.post(f"{URL}{account.pk}/reset-password/", {"password": "new-password-1"}, "application/json")

    assert error_of(response, 400)["code"] == "invalid"
    account.refresh_from_db()
    assert account.login_verifier == verifier
    assert not AuditEvent.objects.filter(action="account.password_reset").exists()
    short = client.post(f"{URL}{account.pk}/reset-password/", {"password": "short"}, "application/json")
    assert set(error_of(short, 400)["fields"]) == {"password"}


def test_it_lists_an_accounts_vaults(acme, globex):
    account = make_account(acme, "alice")
    StorageVault.objects.create(
        tenant=acme.tenant, account=account, vault_id="v2", name="Cloud", kind="s3", bytes_used=5, quota_bytes=10
    )
    StorageVault.objects.create(tenant=acme.tenant, account=account, vault_id="v1", name="Archive")
    StorageVault.objects.create(tenant=globex.tenant, account=make_account(globex, "gina"), vault_id="v9", name="G")
    client = api_client(acme.auditor, acme.tenant, "session")

    body = client.get(f"{URL}{account.pk}/vaults/").json()

    assert body["count"] == 2
    assert [vault["name"] for vault in body["results"]] == ["Archive", "Cloud"]
    cloud = body["results"][1]
    assert {key: cloud[key] for key in ("vault_id", "kind", "bytes_used", "quota_bytes")} == {
        "vault_id": "v2",
        "kind": "s3",
        "bytes_used": 5,
        "quota_bytes": 10,
    }


@VIA
def test_it_sends_a_command_to_every_active_device_of_an_account(acme, via):
    account = make_account(acme, "alice")
    first, second = make_device(account, 1), make_device(account, 2)
    make_device(account, 3, revoked_at=timezone.now())
    make_device(make_account(acme, "bob"), 4)
    client = api_client(acme.technician, acme.tenant, via)

    response = client.post(
        f"{URL}{account.pk}/commands/", {"kind": "collect_logs", "parameters": {"lines": 50}}, "application/json"
    )

    assert response.status_code == 202, response.content
    commands = list(Command.objects.order_by("device_id"))
    assert [(command.device, command.kind, command.parameters, command.status) for command in commands] == [
        (first, "collect_logs", {"lines": 50}, "queued"),
        (second, "collect_logs", {"lines": 50}, "queued"),
    ]
    assert response.json() == {
        "count": 2,
        "skipped": 0,
        "commands": [{"id": command.pk, "device": command.device_id} for command in commands],
    }
    events = AuditEvent.objects.filter(action="command.issued", actor=acme.technician)
    assert sorted(event.target_id for event in events) == sorted(str(command.pk) for command in commands)


def test_it_sends_only_commands_that_suit_a_whole_account(acme):
    account = make_account(acme, "alice")
    make_device(account)
    client = api_client(acme.owner, acme.tenant, "api_key")

    for body in (
        {"kind": "uninstall"},
        {"kind": "run_backup", "parameters": {"protected_item_id": "a", "vault_id": "b"}},
        {"kind": "ping", "parameters": {"lines": 5}},
        {"kind": "ping", "parameters": {"unheard_of": 1}},
        {},
    ):
        assert error_of(client.post(f"{URL}{account.pk}/commands/", body, "application/json"), 400), body

    assert not Command.objects.exists()


def test_it_answers_an_account_without_active_devices_with_no_commands(acme):
    account = make_account(acme, "alice")
    services.device_revoke(actor=SYSTEM, device=make_device(account))
    client = api_client(acme.owner, acme.tenant, "api_key")

    response = client.post(f"{URL}{account.pk}/commands/", {"kind": "ping"}, "application/json")

    assert (response.status_code, response.json()) == (202, {"count": 0, "skipped": 0, "commands": []})
    assert not Command.objects.exists()
