"""The portal's side of encrypted backups: vault records, the new job counters, the vault commands, the
device's password change, and crypto-shredding's audit trail. The agent's side is in
test_backup_restore.py and test_backup_e2e.py."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from django.test import Client

from devices import keys, protocol, services
from devices.models import BackupAccount, Command, Job, ProtectedItem, StorageVault
from tenants.audit import SYSTEM
from tenants.models import AuditEvent
from tests.devices.conftest import db
from tests.devices.test_api import API, make_account, make_device
from tests.tenants.test_api import api_client, error_of


def frame(message_type: str, **fields) -> str:
    return json.dumps({"v": 1, "type": message_type, **fields})


# --- Protocol -------------------------------------------------------------------------------


def test_it_accepts_the_backup_counters_and_refuses_bad_ones():
    job_id = str(uuid.uuid4())
    counters = {"chunks_total": 9, "chunks_new": 6, "bytes_new": 10, "vault_bytes_used": 99}
    assert protocol.parse(frame("job_progress", job_id=job_id, percent=5, **counters))["chunks_new"] == 6
    finished = protocol.parse(frame("job_finished", job_id=job_id, status="succeeded", snapshot_id="s", **counters))
    assert finished["snapshot_id"] == "s"
    protocol.parse(frame("job_progress", job_id=job_id, percent=5))  # an older agent: no new counters
    for bad in ({"chunks_new": -1}, {"bytes_new": "10"}, {"vault_bytes_used": True}):
        with pytest.raises(protocol.ProtocolError):
            protocol.parse(frame("job_progress", job_id=job_id, percent=5, **bad))
    with pytest.raises(protocol.ProtocolError):
        protocol.parse(frame("job_finished", job_id=job_id, status="succeeded", snapshot_id="x" * 65))
    vault = {"vault_id": "v", "name": "V", "kind": "local", "bytes_used": 1}
    protocol.parse(frame("status", vaults=[{**vault, "encryption_format": 1, "key_id": "ab" * 16}]))
    with pytest.raises(protocol.ProtocolError):
        protocol.parse(frame("status", vaults=[{**vault, "key_id": 5}]))


pytestmark = pytest.mark.django_db(transaction=True)


async def test_it_updates_the_vaults_usage_live_from_a_jobs_progress(acme, registration, device_socket):
    device = registration.device
    await db(StorageVault.objects.create)(tenant=acme.tenant, account=device.account, vault_id="v1", name="NAS")
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.hello()
    job_id = str(uuid.uuid4())
    await socket.send("job_started", job_id=job_id, kind="backup", protected_item_id="docs", vault_id="v1")
    await socket.send(
        "job_progress",
        job_id=job_id,
        percent=40,
        bytes_read=4_000,
        bytes_uploaded=1_045,
        chunks_total=4,
        chunks_new=1,
        bytes_new=1_000,
        vault_bytes_used=123_456,
    )
    await socket.processed()
    vault = await db(StorageVault.objects.get)(vault_id="v1")
    job = await db(Job.objects.get)(job_id=job_id)
    assert vault.bytes_used == 123_456 and (job.chunks_new, job.bytes_new, job.dedup_ratio) == (1, 1_000, 4.0)
    await socket.send(
        "job_finished", job_id=job_id, status="succeeded", bytes_read=8_000, bytes_new=2_000,
        vault_bytes_used=130_000, snapshot_id="20261201T120000Z-0a0b0c0d",
    )  # fmt: skip
    await socket.processed()
    job = await db(Job.objects.get)(job_id=job_id)
    assert job.snapshot_id == "20261201T120000Z-0a0b0c0d" and job.dedup_ratio == 4.0
    assert (await db(StorageVault.objects.get)(vault_id="v1")).bytes_used == 130_000
    await socket.close()


async def test_it_keeps_the_vaults_key_id_from_the_status_report(acme, registration, device_socket):
    socket = device_socket(registration.token)
    await socket.connect()
    await socket.hello()
    vault = {"vault_id": "v1", "name": "NAS", "kind": "local", "bytes_used": 5, "encryption_format": 1}
    await socket.send("status", protected_items=[], vaults=[{**vault, "key_id": "ab" * 16}])
    await socket.processed()
    from devices.ingest import buffer

    await buffer.flush()
    stored = await db(StorageVault.objects.get)(vault_id="v1")
    assert (stored.encryption_format, stored.key_id, stored.bytes_used) == (1, "ab" * 16, 5)
    await socket.close()


# --- Vault commands -------------------------------------------------------------------------


@pytest.fixture
def device(acme):
    device = make_device(make_account(acme, "alice"), name="alice-laptop")
    ProtectedItem.objects.create(tenant=acme.tenant, device=device, item_id="docs", name="Docs", engine="files")
    StorageVault.objects.create(tenant=acme.tenant, account=device.account, vault_id="nas", name="NAS")
    return device


def test_it_checks_the_vault_commands_parameters(acme, device):
    client = api_client(acme.owner, acme.tenant, "api_key")
    url = f"{API}/devices/{device.pk}/commands/"
    refused = [
        {"kind": "restore", "parameters": {"vault_id": "nas"}},
        {"kind": "restore", "parameters": {"vault_id": "nas", "target": "/restore"}},  # which snapshot?
        {"kind": "restore", "parameters": {"vault_id": "elsewhere", "target": "/r", "protected_item_id": "docs"}},
        {"kind": "restore", "parameters": {"vault_id": "nas", "target": "/r", "snapshot_id": "latest"}},
        {"kind": "apply_retention", "parameters": {"vault_id": "nas", "protected_item_id": "docs"}},
        {
            "kind": "apply_retention",
            "parameters": {"vault_id": "nas", "protected_item_id": "docs", "keep_snapshots": 0},
        },
        {"kind": "rotate_vault_key"},
        {"kind": "list_snapshots", "parameters": {"vault_id": "nas", "target": "/"}},
        {"kind": "run_backup", "parameters": {"protected_item_id": "docs", "vault_id": "nas", "keep_snapshots": -1}},
    ]
    for body in refused:
        assert error_of(client.post(url, body, "application/json"), 400)["code"] == "invalid", body
    assert not Command.objects.exists()
    accepted = [
        {"kind": "restore", "parameters": {"vault_id": "nas", "target": "/srv/restore", "protected_item_id": "docs"}},
        {
            "kind": "restore",
            "parameters": {"vault_id": "nas", "target": "/srv/restore", "snapshot_id": "20261201T120000Z-0a0b0c0d"},
        },
        {
            "kind": "apply_retention",
            "parameters": {"vault_id": "nas", "protected_item_id": "docs", "keep_snapshots": 7},
        },
        {"kind": "rotate_vault_key", "parameters": {"vault_id": "nas"}},
        {"kind": "list_snapshots", "parameters": {"vault_id": "nas"}},
        {"kind": "run_backup", "parameters": {"protected_item_id": "docs", "vault_id": "nas", "keep_snapshots": 30}},
    ]
    for body in accepted:
        response = client.post(url, body, "application/json")
        assert response.status_code == 202, (body, response.content)
        assert Command.objects.get(pk=response.json()["id"]).parameters == body["parameters"]
    assert AuditEvent.objects.filter(action="command.issued").count() == len(accepted)


def test_it_issues_a_restore_from_the_device_page(acme, device, as_user):
    client = as_user(acme.admin)
    page = client.get(f"/t/acme/devices/{device.pk}/")
    assert page.status_code == 200 and b'data-testid="restore"' in page.content
    response = client.post(
        f"/t/acme/devices/{device.pk}/commands/",
        {"kind": "restore", "vault_id": "nas", "protected_item_id": "docs", "target": "/srv/restore"},
    )
    assert response.status_code in (200, 302)
    command = Command.objects.get(kind="restore")
    assert command.parameters == {"vault_id": "nas", "target": "/srv/restore", "protected_item_id": "docs"}
    client.post(f"/t/acme/devices/{device.pk}/commands/", {"kind": "restore", "vault_id": "nas"})
    assert Command.objects.filter(kind="restore").count() == 1  # no target: refused


def test_it_shows_vault_records_without_their_credentials(acme, device):
    vault = StorageVault.objects.get(vault_id="nas")
    services.vault_credentials_set(actor=SYSTEM, vault=vault, credentials={"secret_access_key": "do-not-show"})
    StorageVault.objects.filter(pk=vault.pk).update(encryption_format=1, key_id="cd" * 16)
    response = api_client(acme.auditor, acme.tenant, "api_key").get(f"{API}/accounts/{device.account_id}/vaults/")
    (row,) = response.json()["results"]
    assert row["has_credentials"] is True and row["key_id"] == "cd" * 16 and row["encryption_format"] == 1
    assert "do-not-show" not in response.content.decode() and "credentials" not in row
    services.vault_credentials_set(actor=SYSTEM, vault=vault, credentials={})
    vault.refresh_from_db()
    assert vault.credentials == "" and vault.credentials_updated_at is None
    assert AuditEvent.objects.filter(action="vault.credentials_removed").exists()


# --- Password change from a device, and crypto-shredding --------------------------------------


def _register(client: Client, l_key_hex: str) -> str:
    body = {"tenant": "acme", "username": "alice", "l_key": l_key_hex, "device_id": "device-0001", "name": "laptop"}
    response = client.post("/api/device/v1/register/", body, content_type="application/json")
    assert response.status_code == 201, response.content
    return response.json()["token"]


def test_it_changes_the_password_and_the_profile_together(account, l_key_hex):
    token = _register(Client(), l_key_hex)
    client = Client(headers={"authorization": f"Device {token}"})
    new_l = keys.derive_keys("acme", "alice", "a-new-password")[0].hex()
    blob = base64.b64encode(b"sealed under the new R").decode()
    body = {"old_l_key": new_l, "new_l_key": new_l, "version": 0, "secrets": blob}
    wrong = client.post("/api/device/v1/password/", body, content_type="application/json")
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "bad_credentials"
    stale = client.post(
        "/api/device/v1/password/", {**body, "old_l_key": l_key_hex, "version": 3}, content_type="application/json"
    )
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "version_conflict"
    account.refresh_from_db()
    assert keys.login_verifier_matches(bytes.fromhex(l_key_hex), account.login_verifier)

    done = client.post("/api/device/v1/password/", {**body, "old_l_key": l_key_hex}, content_type="application/json")
    assert done.status_code == 200 and done.json() == {"version": 1, "secrets": blob}
    account.refresh_from_db()
    assert bytes(account.profile_secrets) == b"sealed under the new R" and account.profile_secrets_version == 1
    assert keys.login_verifier_matches(bytes.fromhex(new_l), account.login_verifier)
    assert not keys.login_verifier_matches(bytes.fromhex(l_key_hex), account.login_verifier)
    event = AuditEvent.objects.get(action="account.password_changed")
    assert event.actor_role == "device" and "sealed" not in json.dumps(event.after)
    # The old password no longer registers a device; the new one does.
    refused = Client().post(
        "/api/device/v1/register/",
        {"tenant": "acme", "username": "alice", "l_key": l_key_hex, "device_id": "device-0002"},
        content_type="application/json",
    )
    assert refused.status_code == 401


def test_it_shreds_the_profile_secrets_and_records_it(account, registration):
    services.profile_secrets_put(device=registration.device, version=0, secrets_blob=b"E keys, sealed")
    StorageVault.objects.create(tenant=account.tenant, account=account, vault_id="v1", name="NAS", key_id="ab" * 16)
    services.account_secrets_shred(account=account, actor=SYSTEM)
    stored = BackupAccount.objects.get(pk=account.pk)
    assert (bytes(stored.profile_secrets), stored.profile_secrets_version) == (b"", 2)
    assert (bytes(account.profile_secrets), account.profile_secrets_version) == (b"", 2)
    event = AuditEvent.objects.get(action="account.secrets_shredded")
    assert event.after == {"profile_secrets_bytes": 14, "vaults": ["v1"]} and event.actor_label == SYSTEM.label
    # A device still holding the old version cannot write the old secrets back.
    with pytest.raises(services.RegistrationError) as raised:
        services.profile_secrets_put(device=registration.device, version=1, secrets_blob=b"E keys, sealed")
    assert raised.value.status == 409
