"""The REST API for backup accounts, devices, commands and jobs as a whole: roles, the tenant boundary,
and the account secrets no response may carry.

Each group of routes has its own file (test_api_accounts.py, ...); the helpers here serve them all.
"""

from __future__ import annotations

import base64
import secrets
import uuid

import pytest
from django.utils import timezone

from devices import selectors, services
from devices.models import BackupAccount, Command, Device, Job, JobLogLine, ProtectedItem, StorageVault
from devices.serializers import DEVICE_SORT_CHOICES
from tenants.audit import SYSTEM
from tenants.models import AuditEvent
from tests.tenants.test_api import VIA, api_client, api_key, bearer, error_of

API = "/api/v1/t/acme"


def make_account(cast, username: str, **extra) -> BackupAccount:
    """Make a backup account from a random L: quicker than deriving L from a password."""
    return services.account_create(
        actor=SYSTEM, tenant=cast.tenant, username=username, l_key_hex=secrets.token_hex(24), **extra
    )


def make_device(account: BackupAccount, number: int = 1, **fields) -> Device:
    fields.setdefault("name", f"host-{number:04d}")
    return Device.objects.create(
        tenant=account.tenant,
        account=account,
        device_id=f"device-{number:06d}",
        token_hash=secrets.token_hex(32),
        **fields,
    )


def make_devices(account: BackupAccount, count: int, start: int = 0) -> None:
    Device.objects.bulk_create(
        [
            Device(
                tenant=account.tenant,
                account=account,
                device_id=f"device-{number:06d}",
                name=f"host-{number:06d}",
                os=("Linux", "Windows")[number % 2],
                client_version=f"1.{number % 3}.0",
                is_live=number % 2 == 0,
                has_failing_jobs=number % 5 == 0,
                token_hash=secrets.token_hex(32),
            )
            for number in range(start, start + count)
        ],
        batch_size=500,
    )


def make_job(device: Device, **fields) -> Job:
    return Job.objects.create(
        tenant=device.tenant, device=device, job_id=uuid.uuid4(), started_at=timezone.now(), **fields
    )


@pytest.fixture
def acme_fleet(acme):
    """One of acme's accounts with a device that has a protected item, a vault, a command and a job."""
    account = make_account(acme, "alice", display_name="Alice Example", email="alice@example.com")
    device = make_device(account, name="alice-laptop", os="Linux", consents={"allow_browse": True})
    ProtectedItem.objects.create(
        tenant=acme.tenant, device=device, item_id="documents", name="Documents", engine="files", size_bytes=42
    )
    StorageVault.objects.create(tenant=acme.tenant, account=account, vault_id="vault-1", name="Office NAS")
    command = services.command_issue(actor=SYSTEM, device=device, kind="ping")
    job = make_job(device, command=command, files_total=3)
    return {"account": account, "device": device, "command": command, "job": job}


@pytest.fixture
def globex_fleet(globex):
    account = make_account(globex, "gina")
    device = make_device(account, name="globex-server")
    command = services.command_issue(actor=SYSTEM, device=device, kind="ping")
    return {"account": account, "device": device, "command": command, "job": make_job(device)}


def read_urls(fleet, prefix: str = API) -> list[str]:
    account, device = fleet["account"].pk, fleet["device"].pk
    return [
        f"{prefix}/accounts/",
        f"{prefix}/accounts/{account}/",
        f"{prefix}/accounts/{account}/vaults/",
        f"{prefix}/devices/",
        f"{prefix}/devices/{device}/",
        f"{prefix}/devices/{device}/commands/",
        f"{prefix}/devices/{device}/jobs/",
        f"{prefix}/commands/{fleet['command'].pk}/",
        f"{prefix}/jobs/{fleet['job'].pk}/",
    ]


def write_requests(fleet, prefix: str = API) -> list[tuple[str, str, dict | None]]:
    account, device = fleet["account"].pk, fleet["device"].pk
    return [
        ("post", f"{prefix}/accounts/", {"username": "mallory", "password": "password-123"}),
        ("patch", f"{prefix}/accounts/{account}/", {"max_devices": 99, "is_suspended": True}),
        ("post", f"{prefix}/accounts/{account}/reset-password/", {"password": "password-123"}),
        ("post", f"{prefix}/accounts/{account}/commands/", {"kind": "ping"}),
        ("post", f"{prefix}/devices/{device}/commands/", {"kind": "ping"}),
        ("post", f"{prefix}/commands/bulk/", {"kind": "ping", "device_ids": [device]}),
        ("delete", f"{prefix}/devices/{device}/", None),
    ]


def state_of(fleet) -> tuple:
    """Return what any write above would change."""
    account = BackupAccount.objects.get(pk=fleet["account"].pk)
    device = Device.objects.get(pk=fleet["device"].pk)
    return (
        BackupAccount.objects.count(),
        account.max_devices,
        account.is_suspended,
        account.login_verifier,
        device.revoked_at,
        Command.objects.count(),
        AuditEvent.objects.count(),
    )


def test_it_offers_the_devices_pages_sorts():
    assert [value for value, _ in DEVICE_SORT_CHOICES] == list(selectors.DEVICE_SORTS)


@VIA
def test_it_never_shows_an_accounts_login_verifier_or_profile_secrets(acme, acme_fleet, via):
    account = acme_fleet["account"]
    blob = b"opaque-wrapped-keys-" + secrets.token_bytes(16)
    BackupAccount.objects.filter(pk=account.pk).update(profile_secrets=blob, allow_admin_password_reset=True)
    client = api_client(acme.owner, acme.tenant, via)
    responses = [client.get(url) for url in read_urls(acme_fleet)]
    responses.append(
        client.post(f"{API}/accounts/", {"username": "bob", "password": "password-123"}, "application/json")
    )
    responses.append(client.patch(f"{API}/accounts/{account.pk}/", {"display_name": "A"}, "application/json"))

    verifiers = list(BackupAccount.objects.values_list("login_verifier", flat=True))
    for response in responses:
        assert response.status_code in (200, 201), response.content
        body = response.content.decode()
        for forbidden in ("login_verifier", "profile_secrets", "$2b$", *verifiers):
            assert forbidden not in body
        assert base64.b64encode(blob).decode() not in body and blob.hex() not in body


@VIA
def test_it_lets_an_auditor_read_everything_and_write_nothing(acme, acme_fleet, via):
    client = api_client(acme.auditor, acme.tenant, via)
    before = state_of(acme_fleet)

    for url in read_urls(acme_fleet):
        assert client.get(url).status_code == 200, url
    for method, url, body in write_requests(acme_fleet):
        response = getattr(client, method)(url, body, content_type="application/json")
        assert error_of(response, 403)["code"] == "permission_denied", (method, url)

    assert state_of(acme_fleet) == before


@VIA
def test_it_lets_a_technician_issue_commands_but_not_manage_accounts_or_devices(acme, acme_fleet, via):
    client = api_client(acme.technician, acme.tenant, via)
    before = state_of(acme_fleet)
    device = acme_fleet["device"]

    for method, url, body in write_requests(acme_fleet):
        if "commands/" in url:
            continue
        response = getattr(client, method)(url, body, content_type="application/json")
        assert error_of(response, 403)["code"] == "permission_denied", (method, url)
    assert state_of(acme_fleet) == before

    response = client.post(f"{API}/devices/{device.pk}/commands/", {"kind": "ping"}, "application/json")
    assert response.status_code == 202
    response = client.post(f"{API}/commands/bulk/", {"kind": "ping", "device_ids": [device.pk]}, "application/json")
    assert response.status_code == 202
    response = client.post(f"{API}/accounts/{acme_fleet['account'].pk}/commands/", {"kind": "ping"}, "application/json")
    assert response.status_code == 202
    issued = AuditEvent.objects.filter(action="command.issued", actor=acme.technician)
    assert issued.count() == 3 and {event.actor_role for event in issued} == {"technician"}


@VIA
def test_it_hides_acme_from_globex(acme, globex, acme_fleet, via):
    client = api_client(globex.owner, globex.tenant, via)
    before = state_of(acme_fleet)

    for url in read_urls(acme_fleet):
        response = client.get(url)
        assert error_of(response, 404)["code"] == "not_found", url
        assert "alice" not in response.content.decode()
    for method, url, body in write_requests(acme_fleet):
        response = getattr(client, method)(url, body, content_type="application/json")
        assert error_of(response, 404)["code"] == "not_found", (method, url)

    assert state_of(acme_fleet) == before


def test_it_keeps_a_globex_key_out_of_acme(acme, globex, acme_fleet):
    client = bearer(api_key(globex.owner, globex.tenant))

    for url in read_urls(acme_fleet):
        assert error_of(client.get(url), 404)["code"] == "not_found", url
    assert client.get("/api/v1/t/globex/devices/").status_code == 200


def test_it_does_not_find_another_tenants_rows_in_its_own_tenant(acme, acme_fleet, globex_fleet):
    """Acme's owner names globex's ids under /t/acme/: each is a 404 and nothing changes."""
    client = bearer(api_key(acme.owner, acme.tenant))
    before = state_of(globex_fleet)

    for url in read_urls(globex_fleet):
        if url.endswith(("/accounts/", "/devices/")):
            continue
        assert error_of(client.get(url), 404)["code"] == "not_found", url
    for method, url, body in write_requests(globex_fleet):
        if url.endswith(("/accounts/", "/commands/bulk/")):
            continue
        response = getattr(client, method)(url, body, content_type="application/json")
        assert error_of(response, 404)["code"] == "not_found", (method, url)

    assert state_of(globex_fleet) == before
    listed = client.get(f"{API}/devices/").json()["results"]
    assert [device["id"] for device in listed] == [acme_fleet["device"].pk]


def test_it_refuses_a_suspended_tenant(initech):
    client = bearer(api_key(initech.owner, initech.tenant))

    assert error_of(client.get("/api/v1/t/initech/devices/"), 403)["code"] == "tenant_suspended"
    response = client.post(
        "/api/v1/t/initech/accounts/", {"username": "x", "password": "password-1"}, "application/json"
    )
    assert error_of(response, 403)["code"] == "tenant_suspended"


def test_it_shows_a_job_with_its_counters_and_log(acme, acme_fleet):
    job = acme_fleet["job"]
    Job.objects.filter(pk=job.pk).update(status="warning", files_done=2, bytes_read=2048, progress_percent=66.5)
    for number in range(3):
        JobLogLine.objects.create(job=job, logged_at=timezone.now(), level="info", message=f"line {number}")
    client = api_client(acme.auditor, acme.tenant, "api_key")

    body = client.get(f"{API}/jobs/{job.pk}/").json()

    assert body["job_id"] == str(job.job_id)
    assert (body["device"], body["command"], body["status"]) == (job.device_id, job.command_id, "warning")
    assert (body["files_done"], body["files_total"], body["bytes_read"], body["progress_percent"]) == (2, 3, 2048, 66.5)
    assert [line["message"] for line in body["log_lines"]] == ["line 0", "line 1", "line 2"]
    assert set(body["log_lines"][0]) == {"logged_at", "level", "message"}


def test_it_lists_a_devices_jobs_newest_first(acme, acme_fleet, globex_fleet):
    device = acme_fleet["device"]
    newer = make_job(device)
    client = api_client(acme.owner, acme.tenant, "session")

    body = client.get(f"{API}/devices/{device.pk}/jobs/").json()

    assert body["count"] == 2
    assert [job["id"] for job in body["results"]] == [newer.pk, acme_fleet["job"].pk]
    assert "log_lines" not in body["results"][0]
