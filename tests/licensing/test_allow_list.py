"""The allow-list: a report carries exactly the paths below, and none of the portal's other data.

ALLOWED is the allow-list written out by hand. Adding a field to licensing.schema without adding
it here fails test_it_allows_exactly_the_documented_paths; making the builder emit a field the
schema lacks fails every build (the writer checks each part), which
test_it_refuses_to_build_a_report_with_a_field_outside_the_allow_list shows.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from devices.models import Command, Job, JobLogLine, ProtectedItem
from licensing import payload as payload_format
from licensing import schema, selectors, services
from licensing.schema import SchemaError
from tenants import services as tenant_services
from tenants.audit import SYSTEM, Actor, audit_record
from tenants.models_access import AccessRequest
from tests.licensing.conftest import make_account, make_device, make_vault

pytestmark = pytest.mark.django_db

DOCS = Path(__file__).resolve().parents[2] / "docs" / "licensing.md"
FEATURES = [
    "tenants",
    "tenants_suspended",
    "tenants_requiring_two_factor",
    "admins",
    "backup_accounts",
    "devices",
    "devices_with_protected_items",
    "protected_items",
    "storage_vaults",
    "api_keys_active",
    "staff_access_requests",
]
COMMANDS = [
    "ping",
    "run_backup",
    "cancel_job",
    "refresh_profile",
    "update_software",
    "uninstall",
    "drop_connection",
    "collect_logs",
    "browse_files",
    "restore",
    "apply_retention",
    "rotate_vault_key",
    "list_snapshots",
]
JOBS = ["backup", "restore", "retention", "verify"]
ROLES = ("owner", "admin", "technician", "auditor")
ALLOWED = {
    "schema_version",
    "tenants[].admins[]",
    "tenants[].backup_accounts[]",
    "tenants[].devices[].name",
    "tenants[].devices[].account",
    "tenants[].devices[].boosters[]",
    "portal.serial",
    "portal.period",
    "portal.generated_at",
    "portal.activity_from",
    "portal.activity_to",
    *(f"portal.features.{name}" for name in FEATURES),
    *(f"portal.features.commands.{kind}" for kind in COMMANDS),
    *(f"portal.features.jobs.{kind}" for kind in JOBS),
}


def paths_in(value, prefix: str = "") -> set[str]:
    """Every leaf path of a parsed report, in the allow-list's notation."""
    if isinstance(value, dict):
        found: set[str] = set()
        for key, item in value.items():
            found |= paths_in(item, f"{prefix}.{key}" if prefix else key)
        return found
    if isinstance(value, list):
        found = set()
        for item in value:
            found |= paths_in(item, prefix + "[]")
        return found
    return {prefix}


def build(period=None) -> tuple[bytes, dict]:
    report, _ = services.usage_report_create(period=period)
    data = selectors.usage_report_json(report=report)
    return data, json.loads(data)


def test_it_allows_exactly_the_documented_paths():
    assert set(schema.allowed_paths()) == ALLOWED


def test_it_documents_every_allowed_path():
    text = DOCS.read_text()
    missing = [path for path in sorted(ALLOWED) if f"`{path}`" not in text]
    assert not missing, f"docs/licensing.md does not list {missing}"


def test_it_allows_the_engines_commands_and_jobs_the_portal_knows():
    assert set(schema.allowed_values(schema.Booster)) == set(ProtectedItem.Engine.values)
    assert list(schema.fields_of(schema.CommandUsage)) == COMMANDS
    assert set(COMMANDS) == set(Command.Kind.values)
    assert set(schema.fields_of(schema.JobUsage)) == set(Job.Kind.values)


def test_it_builds_a_report_of_allowed_paths_only(small_fleet):
    data, report = build()

    schema.check(report, schema.UsageReportPayload)
    assert paths_in(report) <= ALLOWED
    # Every level is present in this report (else the subset check proves little).
    assert {"tenants[].devices[].boosters[]", "tenants[].admins[]", "portal.features.jobs.verify"} <= paths_in(report)


@pytest.mark.parametrize(
    ("part", "annotation"),
    [
        ({"name": "pc", "account": "alice", "boosters": [], "timezone": "UTC"}, schema.DevicePart),
        ({"admins": [], "backup_accounts": [], "devices": [], "slug": "acme"}, schema.TenantPart),
        ({"name": "pc", "account": "alice", "boosters": ["files", "C:\\secret"]}, schema.DevicePart),
        ({"name": "pc", "account": "alice"}, schema.DevicePart),
        ({"name": "x" * 201, "account": "alice", "boosters": []}, schema.DevicePart),
    ],
)
def test_it_refuses_a_part_outside_the_allow_list(part, annotation):
    with pytest.raises(SchemaError):
        schema.check(part, annotation)


def test_it_refuses_to_build_a_report_with_a_field_outside_the_allow_list(small_fleet, licence, monkeypatch):
    original = selectors.device_part

    def leaky_device_part(**fields):
        return {**original(**fields), "timezone": "Europe/Berlin"}

    monkeypatch.setattr(selectors, "device_part", leaky_device_part)

    with pytest.raises(SchemaError, match="timezone"):
        selectors.usage_report_build(serial=licence.serial, period=timezone.now().date())


def test_it_refuses_a_portal_part_with_an_extra_feature(licence):
    writer = payload_format.PayloadWriter()
    writer.begin()
    built = selectors.usage_report_build(serial=licence.serial, period=timezone.now().date())
    portal = {**built.portal, "features": {**built.portal["features"], "vault_bytes": 10}}

    with pytest.raises(SchemaError, match="vault_bytes"):
        writer.finish(portal)


def _portal_full_of_data(acme, globex, staff) -> dict[str, list[str]]:
    """Fill every table a report could read with values that must never leave the portal."""
    secrets_ = {
        # The slug itself is part of the cast's usernames ("acme-owner"): checked as a whole value below.
        "tenant": ["Acme Corporation", "AcmeDisplayBrand", "#a1b2c3", "Globex Corporation"],
        "ip": ["203.0.113.77", "198.51.100.23", "2001:db8::beef"],
        "timezone": ["Pacific/Chatham", "America/Argentina/Ushuaia"],
        "os": ["FreeBSD 14.1-RELEASE", "Windows Server 2016 Datacenter"],
        "client": ["9.87.654-secret", "aarch64-secret"],
        "file": ["C:\\Users\\alice\\Documents\\Payroll-2026.xlsx", "/home/alice/.ssh/id_ed25519"],
        "item": ["Payroll database", "CEO mailbox"],
        "vault": ["s3://acme-private-bucket/backups", "Offsite vault Zurich"],
        "vault_bytes": ["987654321987"],
        "key": [],
        "email": ["alice.private@acme.example", "billing-secret@acme.example"],
        "display_name": ["Alice Wonderland-Secret"],
        "job_log": ["Read 12345 files from D:\\Finance\\Q3"],
        "ticket": ["INC-424242", "Staff access justification text"],
        "channel": ["specific.inmemory!SecretChannel"],
    }
    acme.tenant.display_name, acme.tenant.accent_colour = "AcmeDisplayBrand", "#a1b2c3"
    acme.tenant.save(update_fields=["display_name", "accent_colour"])
    alice = make_account(
        acme.tenant,
        "alice",
        display_name="Alice Wonderland-Secret",
        email="alice.private@acme.example",
        profile_secrets=b"wrapped-R-key-blob-secret",
    )
    device = make_device(
        alice,
        "alice-laptop",
        engines=["files", "mssql", "exchange"],
        item_names=["C:\\Users\\alice\\Documents\\Payroll-2026.xlsx", "Payroll database", "CEO mailbox"],
        os="FreeBSD 14.1-RELEASE",
        arch="aarch64-secret",
        client_version="9.87.654-secret",
        timezone="Pacific/Chatham",
        public_ip="203.0.113.77",
        connection_channel="specific.inmemory!SecretChannel",
        consents={"allow_browse": True, "note": "/home/alice/.ssh/id_ed25519"},
    )
    bob = make_account(globex.tenant, "bob", email="billing-secret@acme.example")
    make_device(bob, "bob-server", engines=["hyperv"], timezone="America/Argentina/Ushuaia", public_ip="2001:db8::beef")
    make_vault(alice, "s3://acme-private-bucket/backups", bytes_used=987654321987, kind="s3")
    make_vault(bob, "Offsite vault Zurich")
    command = Command.objects.create(
        tenant=acme.tenant,
        device=device,
        kind="browse_files",
        parameters={"path": "/home/alice/.ssh/id_ed25519"},
        expires_at=timezone.now() + timedelta(hours=1),
    )
    job = Job.objects.create(
        tenant=acme.tenant,
        device=device,
        job_id=uuid.uuid4(),
        command=command,
        protected_item_id="item-0",
        vault_id="vault-1",
        started_at=timezone.now() - timedelta(days=1),
    )
    JobLogLine.objects.create(job=job, logged_at=timezone.now(), message="Read 12345 files from D:\\Finance\\Q3")
    issued = tenant_services.api_key_create(actor=SYSTEM, tenant=acme.tenant, user=acme.owner, name="ci key")
    secrets_["key"] += [issued.raw_key, issued.api_key.key_hash, device.token_hash, alice.login_verifier]
    audit_record(
        actor=Actor(label="someone", ip_address="198.51.100.23"),
        tenant=acme.tenant,
        action="probe",
        after={"path": "/home/alice/.ssh/id_ed25519"},
    )
    AccessRequest.objects.create(
        tenant=acme.tenant,
        requester=staff,
        reason_code="customer_support",
        ticket_reference="INC-424242",
        justification="Staff access justification text",
        areas=["devices"],
        created_at=timezone.now() - timedelta(days=1),
        lapses_at=timezone.now() + timedelta(hours=11),
    )
    return secrets_


def _forms(value: str) -> list[bytes]:
    """The value as bytes, raw and as it would look inside a JSON string."""
    return [value.encode(), payload_format.dumps(value)[1:-1].encode()]


def test_it_sends_nothing_of_a_portal_full_of_data_but_the_allow_list(acme, globex, staff, licence):
    secrets_ = _portal_full_of_data(acme, globex, staff)

    data, report = build()

    for kind, values in secrets_.items():
        for value in values:
            for form in _forms(value):
                assert form not in data, f"the report contains {kind} {value!r}"
    assert b'"acme"' not in data and b'"globex"' not in data
    # What billing needs is there.
    for allowed in ("alice-laptop", "bob-server", '"alice"', '"bob"', "acme-owner", "globex-auditor"):
        assert allowed.encode() in data
    # Strings are usernames, device names, engine codes, the serial and dates: nothing else.
    strings = set(re.findall(r'"((?:[^"\\]|\\.)*)"', data.decode()))
    keys = {segment.rstrip("[]") for path in ALLOWED for segment in path.split(".")}
    usernames = {"alice", "bob"} | {f"{slug}-{role}" for slug in ("acme", "globex") for role in ROLES}
    engines = set(ProtectedItem.Engine.values)
    values = strings - keys - usernames - engines - {"alice-laptop", "bob-server", licence.serial}
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d(T[\d:.]+\+00:00)?", value) for value in values), values


def test_it_never_sends_revoked_devices_or_unknown_engines(acme, licence):
    alice = make_account(acme.tenant, "alice")
    gone = make_device(alice, "gone-laptop", engines=["files"])
    gone.revoked_at = timezone.now()
    gone.save(update_fields=["revoked_at"])
    odd = make_device(alice, "odd-pc")
    ProtectedItem.objects.create(tenant=acme.tenant, device=odd, item_id="x", name="x", engine="tape-robot-secret")

    data, report = build()

    assert b"gone-laptop" not in data and b"tape-robot-secret" not in data
    (device,) = report["tenants"][0]["devices"]
    assert device == {"name": "odd-pc", "account": "alice", "boosters": []}
    assert report["portal"]["features"]["devices"] == 1
