"""Tenant pages for backup accounts and devices: lists, details, account changes and commands."""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from devices import keys, services
from devices.models import BackupAccount, Command, Device, Job, JobLogLine
from tenants.audit import SYSTEM
from tenants.models import AuditEvent

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


def _events(tenant, action):
    return AuditEvent.objects.filter(tenant=tenant, action=action)


def _device(account, name, **fields) -> Device:
    fields.setdefault("device_id", f"dev-{secrets.token_hex(6)}")
    return Device.objects.create(
        tenant=account.tenant, account=account, name=name, token_hash=secrets.token_hex(32), **fields
    )


def _report_inventory(device, allow_browse=False):
    """Store what a device reports on connect: one protected folder and one vault."""
    services.inventory_apply(
        device_pk=device.pk,
        tenant_id=device.tenant_id,
        status={
            "protected_items": [{"item_id": "item-docs", "name": "Documents", "engine": "files", "size_bytes": 2048}],
            "vaults": [{"vault_id": "vault-local", "name": "Local vault", "kind": "local", "bytes_used": 4096}],
        },
    )
    Device.objects.filter(pk=device.pk).update(consents={"allow_browse": allow_browse})
    device.refresh_from_db()
    return device


def _job(device, status=Job.Status.RUNNING, **fields) -> Job:
    return Job.objects.create(
        tenant_id=device.tenant_id,
        device=device,
        job_id=uuid.uuid4(),
        protected_item_id="item-docs",
        vault_id="vault-local",
        status=status,
        started_at=timezone.now(),
        **fields,
    )


# --- Backup accounts ------------------------------------------------------------------------


def test_it_creates_an_account_keeping_only_a_bcrypt_verifier_of_the_password(acme, as_user):
    response = as_user(acme.admin).post(
        "/t/acme/accounts/",
        {
            "username": "Bob@Example.com",
            "password": "bob-password-1",
            "display_name": "Bob's office",
            "email": "bob@example.com",
            "max_devices": "3",
            "max_protected_gb": "2.5",
            "allow_admin_password_reset": "on",
        },
    )
    account = BackupAccount.objects.get(tenant=acme.tenant)
    assert response.status_code == 302 and response["Location"] == f"/t/acme/accounts/{account.pk}/"
    assert account.username == "bob@example.com" and account.display_name == "Bob's office"
    assert account.max_devices == 3 and account.max_protected_bytes == 2_500_000_000
    assert account.allow_admin_password_reset is True
    assert account.login_verifier.startswith("$2b$") and "bob-password-1" not in account.login_verifier
    l_key, _ = keys.derive_keys("acme", "bob@example.com", "bob-password-1")
    assert keys.login_verifier_matches(l_key, account.login_verifier)
    event = _events(acme.tenant, "account.created").get()
    assert event.actor == acme.admin and "bob-password-1" not in str(event.after)


def test_it_shows_the_form_again_when_the_username_is_taken(acme, account, as_user):
    response = as_user(acme.owner).post(
        "/t/acme/accounts/",
        {"username": "alice", "password": "another-pass", "max_devices": "1", "max_protected_gb": "0"},
    )
    assert response.status_code == 400
    assert "This tenant has an account with this username." in response.content.decode()
    assert BackupAccount.objects.filter(tenant=acme.tenant).count() == 1


@pytest.mark.parametrize("role", ["technician", "auditor"])
def test_it_refuses_account_changes_to_roles_without_accounts_manage(acme, account, as_user, role):
    client = as_user(acme.member(role))
    page = client.get("/t/acme/accounts/")
    assert page.status_code == 200 and "account-create" not in page.content.decode()
    created = client.post("/t/acme/accounts/", {"username": "mallory", "password": "x" * 10, "max_devices": "1"})
    suspended = client.post(f"/t/acme/accounts/{account.pk}/suspend/", {"suspended": "on"})
    assert created.status_code == 403 and suspended.status_code == 403
    account.refresh_from_db()
    assert not account.is_suspended and BackupAccount.objects.filter(tenant=acme.tenant).count() == 1


def test_it_lists_accounts_with_search_device_counts_and_the_suspended_flag(acme, globex, account, as_user):
    other = services.account_create(actor=SYSTEM, tenant=acme.tenant, username="carol", password="carol-pass-1")
    services.account_create(actor=SYSTEM, tenant=globex.tenant, username="globex-user", password="globex-pass")
    _device(account, "alice-laptop")
    _device(account, "alice-desktop")
    services.account_set_suspended(actor=SYSTEM, account=other, suspended=True)
    client = as_user(acme.auditor)

    page = client.get("/t/acme/accounts/")
    rows = {row.username: row for row in page.context["accounts"]}
    assert set(rows) == {"alice", "carol"}
    assert rows["alice"].device_count == 2 and rows["carol"].device_count == 0
    assert 'data-testid="account-carol"' in page.content.decode() and "Suspended" in page.content.decode()

    found = client.get("/t/acme/accounts/?search=CAR", headers=HTMX)
    assert [row.username for row in found.context["accounts"]] == ["carol"]
    assert found.templates[0].name == "devices/_account_table.html"


def test_it_edits_an_account_and_records_the_change(acme, account, as_user):
    response = as_user(acme.owner).post(
        f"/t/acme/accounts/{account.pk}/",
        {
            "edit-display_name": "Alice Ltd",
            "edit-email": "it@alice.example",
            "edit-max_devices": "25",
            "edit-max_protected_gb": "1000",
        },
    )
    assert response.status_code == 302
    account.refresh_from_db()
    assert (account.display_name, account.email, account.max_devices) == ("Alice Ltd", "it@alice.example", 25)
    assert account.max_protected_bytes == 10**12
    edit_form = as_user(acme.owner).get(f"/t/acme/accounts/{account.pk}/").content.decode()
    assert 'name="edit-max_protected_gb" value="1000"' in edit_form
    event = _events(acme.tenant, "account.updated").get()
    assert event.before["max_devices"] == 10 and event.after["max_devices"] == 25


def test_it_keeps_an_account_unchanged_when_the_edit_is_invalid(acme, account, as_user):
    response = as_user(acme.owner).post(
        f"/t/acme/accounts/{account.pk}/", {"edit-max_devices": "-1", "edit-max_protected_gb": "0"}
    )
    assert response.status_code == 400
    account.refresh_from_db()
    assert account.max_devices == 10 and not _events(acme.tenant, "account.updated").exists()


def test_it_suspends_and_reactivates_an_account(acme, account, as_user):
    client = as_user(acme.admin)
    client.post(f"/t/acme/accounts/{account.pk}/suspend/", {"suspended": "on"})
    account.refresh_from_db()
    assert account.is_suspended
    assert 'data-testid="account-suspended"' in client.get(f"/t/acme/accounts/{account.pk}/").content.decode()
    client.post(f"/t/acme/accounts/{account.pk}/suspend/", {"suspended": ""})
    account.refresh_from_db()
    assert not account.is_suspended
    assert _events(acme.tenant, "account.suspended").count() == 1
    assert _events(acme.tenant, "account.reactivated").count() == 1


def test_it_refuses_a_password_reset_the_account_did_not_allow(acme, account, as_user):
    client = as_user(acme.owner)
    page = client.get(f"/t/acme/accounts/{account.pk}/").content.decode()
    assert 'data-testid="reset-not-allowed"' in page and 'data-testid="account-reset-password"' not in page
    verifier = account.login_verifier
    response = client.post(
        f"/t/acme/accounts/{account.pk}/reset-password/",
        {"password": "new-password-1", "understood": "on"},
        follow=True,
    )
    assert "does not allow administrators to reset its password" in response.content.decode()
    account.refresh_from_db()
    assert account.login_verifier == verifier
    assert not _events(acme.tenant, "account.password_reset").exists()


def test_it_resets_a_password_the_account_allowed_and_clears_its_secrets(acme, account, as_user):
    BackupAccount.objects.filter(pk=account.pk).update(
        allow_admin_password_reset=True, profile_secrets=b"wrapped-by-old-R", profile_secrets_version=3
    )
    client = as_user(acme.admin)
    page = client.get(f"/t/acme/accounts/{account.pk}/").content.decode()
    assert 'data-testid="account-reset-password"' in page
    assert "clears those secrets" in page and "must log in again" in page

    unconfirmed = client.post(f"/t/acme/accounts/{account.pk}/reset-password/", {"password": "new-password-1"})
    assert unconfirmed.status_code == 400
    account.refresh_from_db()
    assert account.profile_secrets_version == 3

    client.post(f"/t/acme/accounts/{account.pk}/reset-password/", {"password": "new-password-1", "understood": "on"})
    account.refresh_from_db()
    new_l_key, _ = keys.derive_keys("acme", "alice", "new-password-1")
    assert keys.login_verifier_matches(new_l_key, account.login_verifier)
    assert bytes(account.profile_secrets) == b"" and account.profile_secrets_version == 4
    assert _events(acme.tenant, "account.password_reset").get().actor == acme.admin


def test_it_shows_an_accounts_devices_vaults_and_recent_jobs(acme, account, as_user):
    device = _report_inventory(_device(account, "alice-laptop", is_live=True))
    _job(device, progress_percent=40)
    page = as_user(acme.auditor).get(f"/t/acme/accounts/{account.pk}/")
    body = page.content.decode()
    assert [d.name for d in page.context["devices"]] == ["alice-laptop"]
    assert [v.name for v in page.context["vaults"]] == ["Local vault"] and page.context["bytes_used"] == 4096
    assert len(page.context["jobs"]) == 1 and f'data-device="{device.pk}"' in body
    # An auditor reads; the forms that change things are not shown.
    assert 'data-testid="bulk-command"' not in body and 'data-testid="account-edit"' not in body


def test_it_sends_a_bulk_command_to_each_active_device_of_the_account(acme, account, as_user):
    devices = [_device(account, f"alice-{number}") for number in range(3)]
    _device(account, "alice-old", revoked_at=timezone.now())
    other = services.account_create(actor=SYSTEM, tenant=acme.tenant, username="carol", password="carol-pass-1")
    _device(other, "carol-laptop")

    response = as_user(acme.technician).post(f"/t/acme/accounts/{account.pk}/commands/", {"kind": "refresh_profile"})
    assert response.status_code == 302
    commands = Command.objects.filter(tenant=acme.tenant)
    assert sorted(command.device_id for command in commands) == sorted(device.pk for device in devices)
    assert {command.kind for command in commands} == {"refresh_profile"}
    assert {command.issued_by for command in commands} == {acme.technician}
    events = _events(acme.tenant, "command.issued")
    assert sorted(int(event.target_id) for event in events) == sorted(command.pk for command in commands)
    assert all(event.after["bulk"] for event in events)


def test_it_refuses_bulk_commands_to_auditors_and_commands_that_are_not_for_bulk(acme, account, as_user):
    _device(account, "alice-laptop")
    assert as_user(acme.auditor).post(f"/t/acme/accounts/{account.pk}/commands/", {"kind": "ping"}).status_code == 403
    as_user(acme.owner).post(f"/t/acme/accounts/{account.pk}/commands/", {"kind": "uninstall"})
    assert not Command.objects.exists()


# --- Device list ----------------------------------------------------------------------------


@pytest.fixture
def fleet(acme, account):
    now = timezone.now()
    other = services.account_create(actor=SYSTEM, tenant=acme.tenant, username="carol", password="carol-pass-1")
    return {
        "alpha": _device(
            account, "alpha", os="Linux", client_version="1.2.0", is_live=True, last_seen_at=now - timedelta(minutes=1)
        ),
        "bravo": _device(
            account, "bravo", os="Windows", client_version="1.1.0", has_failing_jobs=True, last_seen_at=now
        ),
        "charlie": _device(other, "charlie", os="Linux", client_version="1.1.0", last_seen_at=now - timedelta(days=2)),
        "delta": _device(
            other, "delta", os="Mac OS", client_version="1.2.0", is_live=True, last_seen_at=now - timedelta(hours=1)
        ),
    }


def _names(client, query=""):
    response = client.get("/t/acme/devices/" + query)
    assert response.status_code == 200
    return [device.name for device in response.context["devices"]]


def test_it_filters_the_device_list(acme, fleet, as_user):
    client = as_user(acme.auditor)
    assert _names(client) == ["alpha", "bravo", "charlie", "delta"]
    assert _names(client, "?live=online") == ["alpha", "delta"]
    assert _names(client, "?live=offline") == ["bravo", "charlie"]
    assert _names(client, "?os=Linux") == ["alpha", "charlie"]
    assert _names(client, "?client_version=1.1.0") == ["bravo", "charlie"]
    assert _names(client, "?failing=yes") == ["bravo"]
    assert _names(client, "?os=Linux&live=online") == ["alpha"]
    assert _names(client, f"?account={fleet['charlie'].account_id}") == ["charlie", "delta"]


def test_it_searches_devices_by_name_and_account(acme, globex, fleet, as_user):
    globex_account = services.account_create(
        actor=SYSTEM, tenant=globex.tenant, username="carol", password="carol-pass-1"
    )
    _device(globex_account, "charlie-globex")
    client = as_user(acme.owner)
    assert _names(client, "?search=RAV") == ["bravo"]
    assert _names(client, "?search=carol") == ["charlie", "delta"]


def test_it_sorts_the_device_list(acme, fleet, as_user):
    client = as_user(acme.owner)
    assert _names(client, "?sort=-name") == ["delta", "charlie", "bravo", "alpha"]
    assert _names(client, "?sort=os") == ["alpha", "charlie", "delta", "bravo"]
    assert _names(client, "?sort=version") == ["bravo", "charlie", "alpha", "delta"]
    assert _names(client, "?sort=-last_seen") == ["bravo", "alpha", "delta", "charlie"]
    assert _names(client, "?sort=last_seen") == ["charlie", "delta", "alpha", "bravo"]
    # An unknown sort falls back to the name.
    assert _names(client, "?sort=secret_column") == ["alpha", "bravo", "charlie", "delta"]


def test_it_paginates_the_device_list_without_counting_it(acme, account, as_user):
    Device.objects.bulk_create(
        [
            Device(
                tenant=acme.tenant,
                account=account,
                device_id=f"dev-{n:05d}",
                name=f"host-{n:03d}",
                token_hash=f"{n:064x}",
            )
            for n in range(60)
        ]
    )
    client = as_user(acme.owner)
    first = client.get("/t/acme/devices/?size=25&os=")
    assert [d.name for d in first.context["devices"]][:2] == ["host-000", "host-001"]
    assert first.context["page"].has_next and len(first.context["devices"]) == 25
    assert 'data-testid="next-page"' in first.content.decode()
    third = client.get("/t/acme/devices/?size=25&page=3", headers=HTMX)
    assert [d.name for d in third.context["devices"]] == [f"host-{n:03d}" for n in range(50, 60)]
    assert not third.context["page"].has_next and third.templates[0].name == "devices/_device_table.html"
    assert "page=2" in third.content.decode()


def test_it_shows_a_live_dot_per_device_for_the_fleet_socket(acme, fleet, as_user):
    body = as_user(acme.auditor).get("/t/acme/devices/").content.decode()
    assert f'class="dot live" data-device="{fleet["alpha"].pk}"' in body
    assert f'class="dot" data-device="{fleet["bravo"].pk}"' in body
    assert 'data-socket="/ws/t/acme/fleet/"' in body and "portal/fleet-live.js" in body


# --- Device page ----------------------------------------------------------------------------


@pytest.fixture
def device(account):
    return _report_inventory(_device(account, "alice-laptop", os="Linux", is_live=True, public_ip="198.51.100.7"))


@pytest.mark.parametrize(
    ("role", "commands", "revoke"),
    [("owner", True, True), ("admin", True, True), ("technician", True, False), ("auditor", False, False)],
)
def test_it_shows_each_role_only_the_buttons_it_may_use(acme, device, as_user, role, commands, revoke):
    response = as_user(acme.member(role)).get(f"/t/acme/devices/{device.pk}/")
    body = response.content.decode()
    assert response.status_code == 200
    assert "alice-laptop" in body and "198.51.100.7" in body and "Documents" in body and "Local vault" in body
    assert ('data-testid="run-backup"' in body) is commands
    assert ('data-command-kind="ping"' in body) is commands
    assert ("data-command-kind=" in body) is commands
    assert ('data-testid="revoke"' in body) is revoke


def test_it_disables_browsing_unless_the_device_allows_it(acme, device, as_user):
    client = as_user(acme.technician)
    assert 'data-testid="browse-disabled"' in client.get(f"/t/acme/devices/{device.pk}/").content.decode()
    Device.objects.filter(pk=device.pk).update(consents={"allow_browse": True})
    assert 'data-testid="browse-disabled"' not in client.get(f"/t/acme/devices/{device.pk}/").content.decode()


COMMAND_POSTS = [
    ({"kind": "ping"}, {}),
    ({"kind": "run_backup", "protected_item_id": "item-docs", "vault_id": "vault-local"},
     {"protected_item_id": "item-docs", "vault_id": "vault-local"}),
    ({"kind": "refresh_profile"}, {}),
    ({"kind": "update_software", "version": "1.3.0"}, {"version": "1.3.0"}),
    ({"kind": "update_software"}, {}),
    ({"kind": "uninstall", "remove_config": "on"}, {"remove_config": True}),
    ({"kind": "uninstall"}, {"remove_config": False}),
    ({"kind": "drop_connection"}, {}),
    ({"kind": "collect_logs", "lines": "50"}, {"lines": 50}),
    ({"kind": "collect_logs"}, {"lines": 200}),
]  # fmt: skip


@pytest.mark.parametrize(("data", "parameters"), COMMAND_POSTS)
def test_it_issues_a_command_with_a_row_and_an_audit_event(acme, device, as_user, data, parameters):
    response = as_user(acme.technician).post(f"/t/acme/devices/{device.pk}/commands/", data, headers=HTMX)
    assert response.status_code == 200
    command = Command.objects.get(device=device)
    assert command.kind == data["kind"] and command.parameters == parameters
    assert command.issued_by == acme.technician and command.status == Command.Status.QUEUED
    event = _events(acme.tenant, "command.issued").get()
    assert event.target_id == str(command.pk) and event.actor_role == "technician"
    body = response.content.decode()
    assert f'data-command="{command.pk}"' in body and 'hx-swap-oob="true"' in body and "was sent to" in body


def test_it_cancels_a_running_job_of_the_device(acme, device, as_user):
    job = _job(device)
    page = as_user(acme.technician).get(f"/t/acme/devices/{device.pk}/").content.decode()
    assert 'data-command-kind="cancel_job"' in page
    as_user(acme.technician).post(
        f"/t/acme/devices/{device.pk}/commands/", {"kind": "cancel_job", "job_id": job.job_id}
    )
    assert Command.objects.get(device=device, kind="cancel_job").parameters == {"job_id": str(job.job_id)}


def test_it_refuses_to_cancel_a_job_that_is_not_running_on_this_device(acme, account, device, as_user):
    other_job = _job(_device(account, "alice-desktop"))
    finished = _job(device, status=Job.Status.SUCCEEDED)
    client = as_user(acme.technician)
    for job in (other_job, finished):
        client.post(f"/t/acme/devices/{device.pk}/commands/", {"kind": "cancel_job", "job_id": job.job_id})
    assert not Command.objects.exists()


def test_it_redirects_back_to_the_device_after_a_command_without_htmx(acme, device, as_user):
    response = as_user(acme.owner).post(f"/t/acme/devices/{device.pk}/commands/", {"kind": "ping"}, follow=True)
    assert response.redirect_chain == [(f"/t/acme/devices/{device.pk}/", 302)]
    assert "“Ping” was sent to alice-laptop" in response.content.decode()
    assert Command.objects.filter(device=device, kind="ping").count() == 1


@pytest.mark.parametrize(
    "data",
    [
        {"kind": "run_backup", "protected_item_id": "not-reported", "vault_id": "vault-local"},
        {"kind": "run_backup"},
        {"kind": "no_such_command"},
        {"kind": "collect_logs", "lines": "100000"},
    ],
)
def test_it_answers_an_invalid_command_with_a_message(acme, device, as_user, data):
    response = as_user(acme.technician).post(f"/t/acme/devices/{device.pk}/commands/", data, headers=HTMX)
    assert response.status_code == 200 and 'class="error"' in response.content.decode()
    assert not Command.objects.exists() and not _events(acme.tenant, "command.issued").exists()


def test_it_refuses_to_browse_files_unless_the_device_allows_it(acme, device, as_user):
    client = as_user(acme.technician)
    refused = client.post(f"/t/acme/devices/{device.pk}/commands/", {"kind": "browse_files", "path": "/"}, headers=HTMX)
    assert "does not allow administrators to browse its files" in refused.content.decode()
    assert not Command.objects.exists()
    Device.objects.filter(pk=device.pk).update(consents={"allow_browse": True})
    client.post(f"/t/acme/devices/{device.pk}/commands/", {"kind": "browse_files", "path": "/home"}, headers=HTMX)
    assert Command.objects.get(device=device).parameters == {"path": "/home"}


def test_it_answers_a_command_to_a_revoked_device_with_a_message(acme, device, as_user):
    services.device_revoke(actor=SYSTEM, device=device)
    response = as_user(acme.owner).post(f"/t/acme/devices/{device.pk}/commands/", {"kind": "ping"}, headers=HTMX)
    assert response.status_code == 200 and "This device is revoked." in response.content.decode()
    assert not Command.objects.exists()


def test_it_refuses_commands_to_auditors(acme, device, as_user):
    response = as_user(acme.auditor).post(f"/t/acme/devices/{device.pk}/commands/", {"kind": "ping"})
    assert response.status_code == 403 and not Command.objects.exists()


def test_it_revokes_a_device_for_admins_only(acme, device, as_user):
    assert as_user(acme.technician).post(f"/t/acme/devices/{device.pk}/revoke/").status_code == 403
    device.refresh_from_db()
    assert device.revoked_at is None
    response = as_user(acme.admin).post(f"/t/acme/devices/{device.pk}/revoke/")
    assert response.status_code == 302
    device.refresh_from_db()
    assert device.revoked_at is not None
    assert _events(acme.tenant, "device.revoked").get().actor == acme.admin
    page = as_user(acme.owner).get(f"/t/acme/devices/{device.pk}/").content.decode()
    assert 'data-testid="device-revoked"' in page and 'data-testid="run-backup"' not in page


def test_it_shows_command_results_and_job_logs_when_asked(acme, device, as_user):
    logs = services.command_issue(actor=SYSTEM, device=device, kind="collect_logs", parameters={"lines": 2})
    Device.objects.filter(pk=device.pk).update(consents={"allow_browse": True})
    device.refresh_from_db()
    browse = services.command_issue(actor=SYSTEM, device=device, kind="browse_files", parameters={"path": "/"})
    services.command_advance(
        device_pk=device.pk, command_id=str(logs.command_id), status="succeeded", result={"lines": ["one", "<two>"]}
    )
    services.command_advance(
        device_pk=device.pk,
        command_id=str(browse.command_id),
        status="succeeded",
        result={"entries": [{"name": "notes.txt", "type": "file", "size": 12}]},
    )
    job = _job(device, status=Job.Status.FAILED)
    JobLogLine.objects.create(job=job, logged_at=timezone.now(), level="error", message="Disk full")
    client = as_user(acme.auditor)

    logs_body = client.get(f"/t/acme/devices/{device.pk}/commands/{logs.pk}/").content.decode()
    assert "one\n&lt;two&gt;" in logs_body
    assert "notes.txt" in client.get(f"/t/acme/devices/{device.pk}/commands/{browse.pk}/").content.decode()
    assert "ERROR Disk full" in client.get(f"/t/acme/devices/{device.pk}/jobs/{job.pk}/log/").content.decode()
    commands = client.get(f"/t/acme/devices/{device.pk}/commands/").content.decode()
    assert f'data-command="{logs.pk}"' in commands and "hx-swap-oob" not in commands


def test_it_serves_the_jobs_table_for_live_refreshes(acme, device, as_user):
    job = _job(device, progress_percent=42.5, files_done=3, files_total=10)
    response = as_user(acme.auditor).get(f"/t/acme/devices/{device.pk}/jobs/")
    body = response.content.decode()
    assert response.templates[0].name == "devices/_device_jobs.html"
    assert f'data-job="{job.job_id}"' in body and 'value="42.5"' in body and "3 / 10" in body
    assert "Documents → Local vault" in body


def test_it_hides_another_tenants_accounts_devices_commands_and_jobs(acme, globex, device, as_user):
    command = services.command_issue(actor=SYSTEM, device=device, kind="ping")
    job = _job(device)
    client = as_user(globex.owner)
    urls = [
        f"/t/globex/accounts/{device.account_id}/",
        f"/t/globex/devices/{device.pk}/",
        f"/t/globex/devices/{device.pk}/jobs/",
        f"/t/globex/devices/{device.pk}/jobs/{job.pk}/log/",
        f"/t/globex/devices/{device.pk}/commands/",
        f"/t/globex/devices/{device.pk}/commands/{command.pk}/",
    ]
    for url in urls:
        assert client.get(url).status_code == 404, url
    for url in (
        f"/t/globex/accounts/{device.account_id}/suspend/",
        f"/t/globex/accounts/{device.account_id}/commands/",
        f"/t/globex/devices/{device.pk}/commands/",
        f"/t/globex/devices/{device.pk}/revoke/",
    ):
        assert client.post(url, {"kind": "ping", "suspended": "on"}).status_code == 404, url
    device.refresh_from_db()
    assert device.revoked_at is None and not device.account.is_suspended
    assert Command.objects.count() == 1


def test_it_404s_for_a_job_or_command_of_another_device_of_the_same_tenant(acme, account, device, as_user):
    other = _device(account, "alice-desktop")
    command = services.command_issue(actor=SYSTEM, device=other, kind="ping")
    job = _job(other)
    client = as_user(acme.owner)
    assert client.get(f"/t/acme/devices/{device.pk}/commands/{command.pk}/").status_code == 404
    assert client.get(f"/t/acme/devices/{device.pk}/jobs/{job.pk}/log/").status_code == 404
