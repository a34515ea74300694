"""Bulk-load a bench fleet: tenants, backup accounts, devices with known tokens, protected items,
vaults and jobs.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/portal_bench python bench/seed.py --tenants 1 --devices 100000

Run it with the server's environment (DATABASE_URL; without it, the embedded SQLite database).
On PostgreSQL rows go in with COPY, in batches, one transaction per batch; elsewhere with
bulk_create. A progress bar goes to stderr. By default the bench tables are emptied first
(TRUNCATE ... CASCADE on PostgreSQL): point it only at a database of its own.

Devices are numbered 0..M-1 and split into contiguous blocks, one per tenant (`bench-0`, ...).
Device i has the device id `bench-000000i`, and the token `common.device_token(i)` (an HMAC of the
bench secret and the index) so that the simulator can recompute it; the database keeps only
sha256(token), as devices.services.token_hash does.

Shortcuts, said plainly: every backup account shares one precomputed login verifier, bcrypt(SHA-512(L))
of the fixed key BENCH_L_KEY (not derived from a password), so registration through the REST route
works for any bench account with that L; and job log lines are not seeded.
"""

from __future__ import annotations

import argparse
import bisect
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import common

# The fixed login key of every bench account (48 hex characters = 24 bytes, as keys.KEY_BYTES).
BENCH_L_KEY = bytes(range(1, 25))
BENCH_OWNER = "bench-owner"
DEVICES_PER_ACCOUNT = 5
NAME_PREFIXES = ["laptop", "desktop", "srv", "db", "nas", "vm", "mail", "web"]
OSES = ["Windows 11", "Windows 10", "Windows Server 2022", "macOS 15", "Ubuntu 24.04", "Debian 12"]
ARCHES = ["x86_64", "arm64"]
VERSIONS = ["26.8.2", "26.9.0", "26.10.0", "26.10.1", "26.11.0"]
TIMEZONES = ["Europe/Berlin", "Europe/London", "America/New_York", "Asia/Tokyo", "UTC"]
ENGINES = ["files", "disk_image", "mssql", "mysql", "exchange", "hyperv", "vmware", "office365"]

# Children first, so that plain DELETEs work where TRUNCATE ... CASCADE does not exist.
BENCH_TABLES = [
    "devices_joblogline",
    "devices_job",
    "devices_command",
    "devices_protecteditem",
    "devices_storagevault",
    "devices_device",
    "devices_backupaccount",
    "tenants_auditevent",
    "tenants_invitation",
    "tenants_apikey",
    "tenants_membership",
    "tenants_tenant",
]


def device_name(index: int) -> str:
    return f"{NAME_PREFIXES[index % len(NAME_PREFIXES)]}-{index:06d}"


def status_message(index: int, seq: int = 0, items: int = 2) -> dict[str, Any]:
    """The `status` a bench device sends: the same item and vault ids as the seed."""
    return {
        "v": 1,
        "type": "status",
        "protected_items": [
            {
                "item_id": f"item-{j}",
                "name": f"Item {j}",
                "engine": ENGINES[(index + j) % len(ENGINES)],
                # The first item's size carries the message's sequence number, so a bench can tell
                # which status was the last one persisted.
                "size_bytes": seq if j == 0 else 1_000_000 * (j + 1),
            }
            for j in range(items)
        ],
        "vaults": [{"vault_id": "vault-1", "name": "Primary vault", "kind": "s3", "bytes_used": 10**9 + seq}],
    }


class Layout:
    """Which tenant and account each device index belongs to: contiguous blocks per tenant."""

    def __init__(self, tenants: int, devices: int, per_account: int = DEVICES_PER_ACCOUNT) -> None:
        self.tenants, self.devices, self.per_account = tenants, devices, per_account
        self.starts = [t * devices // tenants for t in range(tenants + 1)]
        self.bases = [0]
        for t in range(tenants):
            self.bases.append(self.bases[-1] + -(-(self.starts[t + 1] - self.starts[t]) // per_account))

    def tenant_of(self, index: int) -> int:
        return bisect.bisect_right(self.starts, index) - 1

    def tenant_of_account(self, account: int) -> int:
        return bisect.bisect_right(self.bases, account) - 1

    def account_of(self, index: int) -> tuple[int, int]:
        """(tenant, global account number) of a device index."""
        tenant = self.tenant_of(index)
        return tenant, self.bases[tenant] + (index - self.starts[tenant]) // self.per_account

    @property
    def accounts(self) -> int:
        return self.bases[-1]


class Progress:
    def __init__(self, total: int, label: str, quiet: bool = False) -> None:
        self.total, self.label, self.quiet = max(total, 1), label, quiet
        self.started = time.monotonic()
        self.done = 0

    def advance(self, count: int) -> None:
        self.done += count
        if self.quiet:
            return
        fraction = min(1.0, self.done / self.total)
        bar = "#" * int(fraction * 30)
        elapsed = time.monotonic() - self.started
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {fraction * 100:5.1f}% {self.done}/{self.total} {elapsed:6.1f} s")
        sys.stderr.flush()

    def finish(self) -> None:
        if not self.quiet:
            sys.stderr.write("\n")


class Writer:
    """COPY on PostgreSQL, bulk_create elsewhere; explicit primary keys either way."""

    def __init__(self) -> None:
        from django.db import connection

        self.connection = connection
        self.postgres = connection.vendor == "postgresql"

    def write(self, model: Any, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        # Columns the rows do not name get the model's default, as the ORM would give them: a
        # field added later (with a Python default, not a database one) must not break COPY.
        named = set(rows[0])
        defaults = {
            field.attname: field.get_default()
            for field in model._meta.concrete_fields
            if field.attname not in named and not field.primary_key
        }
        if defaults:
            rows = [{**row, **defaults} for row in rows]
        if self.postgres:
            columns = list(rows[0])
            table = model._meta.db_table
            self.connection.ensure_connection()
            with self.connection.cursor() as cursor:
                raw = cursor.cursor  # the psycopg cursor under Django's wrapper
                with raw.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(tuple(row.values()))
        else:
            model.objects.bulk_create([model(**row) for row in rows], batch_size=500)

    def next_id(self, model: Any) -> int:
        with self.connection.cursor() as cursor:
            cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {model._meta.db_table}")
            return int(cursor.fetchone()[0]) + 1

    def reset(self) -> None:
        with self.connection.cursor() as cursor:
            if self.postgres:
                cursor.execute(f"TRUNCATE {', '.join(BENCH_TABLES)} RESTART IDENTITY CASCADE")
            else:
                for table in BENCH_TABLES:
                    cursor.execute(f"DELETE FROM {table}")

    def fix_sequences(self, models: list[Any]) -> None:
        if not self.postgres:
            return
        with self.connection.cursor() as cursor:
            for model in models:
                table = model._meta.db_table
                cursor.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT COALESCE(MAX(id), 1) FROM {table}))"
                )

    def vacuum_analyze(self) -> None:
        """Leave the tables as autovacuum leaves them shortly after a bulk load: statistics taken,
        visibility map set, and GIN pending lists merged (an unmerged list is read by every search,
        which measured the load, not the product)."""
        if self.postgres:
            with self.connection.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE")


def seed(
    *,
    tenants: int,
    devices: int,
    items_per_device: int = 2,
    jobs_per_device: int = 1,
    per_account: int = DEVICES_PER_ACCOUNT,
    reset: bool = True,
    secret: str = common.DEFAULT_SECRET,
    batch: int = 10_000,
    quiet: bool = False,
) -> dict[str, Any]:
    """Load the fleet; return what was written and how long it took."""
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from devices import keys
    from devices.models import BackupAccount, Device, Job, ProtectedItem, StorageVault
    from tenants.models import Membership, Tenant

    if tenants < 1 or devices < tenants:
        raise SystemExit("Need at least one tenant and at least one device per tenant.")
    started = time.monotonic()
    writer = Writer()
    if reset:
        writer.reset()
        get_user_model().objects.filter(username=BENCH_OWNER).delete()
    elif Tenant.objects.filter(slug__startswith="bench-").exists():
        raise SystemExit("Bench tenants exist already: run with --reset (the default) or use another database.")
    layout = Layout(tenants, devices, per_account)
    rng = random.Random(1234)
    now = datetime.now(UTC)
    # One bcrypt hash for every account: hashing 20,000 verifiers at cost 12 would take hours.
    verifier = keys.login_verifier(BENCH_L_KEY)
    ids = {model: writer.next_id(model) for model in (Tenant, BackupAccount, StorageVault, Device, ProtectedItem, Job)}

    owner, _ = get_user_model().objects.get_or_create(
        username=BENCH_OWNER, defaults={"email": "bench-owner@example.com"}
    )
    owner.set_unusable_password()
    owner.save()
    with transaction.atomic():
        writer.write(
            Tenant,
            [
                {
                    "id": ids[Tenant] + t,
                    "slug": f"bench-{t}",
                    "name": f"Bench tenant {t}",
                    "status": "active",
                    "display_name": "",
                    "accent_colour": "#1f6feb",
                    "logo": b"",
                    "logo_content_type": "",
                    "require_two_factor": False,
                    "created_at": now,
                }
                for t in range(tenants)
            ],
        )
        Membership.objects.bulk_create(
            [Membership(tenant_id=ids[Tenant] + t, user=owner, role="owner") for t in range(tenants)]
        )

    progress = Progress(layout.accounts + devices, "accounts+devices", quiet=quiet)
    # Accounts and their vaults, in batches.
    for first in range(0, layout.accounts, batch):
        accounts, vaults = [], []
        for a in range(first, min(first + batch, layout.accounts)):
            tenant = layout.tenant_of_account(a)
            account_pk = ids[BackupAccount] + a
            accounts.append(
                {
                    "id": account_pk,
                    "tenant_id": ids[Tenant] + tenant,
                    "username": f"account-{a:06d}",
                    "display_name": f"Customer {a}",
                    "email": "",
                    "max_devices": max(10, per_account),
                    "max_protected_bytes": 0,
                    "is_suspended": False,
                    "login_verifier": verifier,
                    "allow_admin_password_reset": False,
                    "profile_secrets": b"",
                    "profile_secrets_version": 0,
                    "created_at": now,
                }
            )
            vaults.append(
                {
                    "id": ids[StorageVault] + a,
                    "tenant_id": ids[Tenant] + tenant,
                    "account_id": account_pk,
                    "vault_id": "vault-1",
                    "name": "Primary vault",
                    "kind": "s3",
                    "bytes_used": rng.randrange(10**9, 10**12),
                    "quota_bytes": 0,
                    "updated_at": now,
                }
            )
        with transaction.atomic():
            writer.write(BackupAccount, accounts)
            writer.write(StorageVault, vaults)
        progress.advance(len(accounts))

    # Devices, their protected items and jobs, in batches.
    for first in range(0, devices, batch):
        device_rows, item_rows, job_rows = [], [], []
        for index in range(first, min(first + batch, devices)):
            tenant, account = layout.account_of(index)
            device_pk = ids[Device] + index
            tenant_pk = ids[Tenant] + tenant
            failing = index % 20 == 7
            seen = now - timedelta(seconds=rng.randrange(0, 7 * 86400))
            device_rows.append(
                {
                    "id": device_pk,
                    "tenant_id": tenant_pk,
                    "account_id": ids[BackupAccount] + account,
                    "device_id": common.device_uid(index),
                    "name": device_name(index),
                    "os": OSES[index % len(OSES)],
                    "arch": ARCHES[index % 7 == 0],
                    "client_version": VERSIONS[(index // 3) % len(VERSIONS)],
                    "timezone": TIMEZONES[index % len(TIMEZONES)],
                    "public_ip": f"198.51.100.{index % 250 + 1}",
                    "token_hash": common.token_hash(common.device_token(index, secret)),
                    "token_rotated_at": now,
                    "revoked_at": None,
                    "registered_at": seen - timedelta(days=30),
                    "last_seen_at": seen,
                    "is_live": False,
                    "connection_channel": "",
                    "consents": '{"allow_browse": false}' if writer.postgres else {"allow_browse": False},
                    "has_failing_jobs": failing,
                }
            )
            for j in range(items_per_device):
                item_rows.append(
                    {
                        "id": ids[ProtectedItem] + index * items_per_device + j,
                        "tenant_id": tenant_pk,
                        "device_id": device_pk,
                        "item_id": f"item-{j}",
                        "name": f"Item {j}",
                        "engine": ENGINES[(index + j) % len(ENGINES)],
                        "size_bytes": 1_000_000 * (j + 1),
                    }
                )
            for j in range(jobs_per_device):
                started_at = seen - timedelta(hours=j + 1)
                job_rows.append(
                    {
                        "id": ids[Job] + index * jobs_per_device + j,
                        "tenant_id": tenant_pk,
                        "device_id": device_pk,
                        "job_id": uuid.UUID(int=(index << 16) + j + 1),
                        "command_id": None,
                        "kind": "backup",
                        "protected_item_id": "item-0",
                        "vault_id": "vault-1",
                        "status": "failed" if failing and j == 0 else "succeeded",
                        "progress_percent": 100.0,
                        "files_done": 1000,
                        "files_total": 1000,
                        "bytes_read": 10**8,
                        "bytes_uploaded": 10**7,
                        "started_at": started_at,
                        "finished_at": started_at + timedelta(minutes=5),
                    }
                )
        with transaction.atomic():
            writer.write(Device, device_rows)
            writer.write(ProtectedItem, item_rows)
            writer.write(Job, job_rows)
        progress.advance(len(device_rows))
    progress.finish()
    writer.fix_sequences([Tenant, BackupAccount, StorageVault, Device, ProtectedItem, Job])
    writer.vacuum_analyze()
    elapsed = time.monotonic() - started
    return {
        "tenants": tenants,
        "accounts": layout.accounts,
        "devices": devices,
        "protected_items": devices * items_per_device,
        "jobs": devices * jobs_per_device,
        "first_tenant_pk": ids[Tenant],
        "first_device_pk": ids[Device],
        "seconds": round(elapsed, 2),
        "devices_per_second": round(devices / elapsed),
        "method": "COPY" if writer.postgres else "bulk_create",
    }


def seeded_devices() -> int:
    """How many bench devices exist whose tokens match the bench secret (0 if the fleet is stale)."""
    from devices.models import Device

    count = Device.objects.filter(device_id__startswith="bench-").count()
    if not count:
        return 0
    last = common.device_uid(count - 1)
    matches = Device.objects.filter(
        device_id=last, token_hash=common.token_hash(common.device_token(count - 1))
    ).exists()
    return count if matches else 0


def seeded_tenants() -> int:
    from tenants.models import Tenant

    return Tenant.objects.filter(slug__startswith="bench-").count()


def ensure_seeded(*, tenants: int, devices: int, quiet: bool = False) -> dict[str, Any] | None:
    """Seed unless a bench fleet of exactly this shape is there already; return the seed's figures."""
    if seeded_devices() == devices and seeded_tenants() == tenants:
        return None
    return seed(tenants=tenants, devices=devices, quiet=quiet)


def ensure_fleet(*, devices: int, tenants: int = 1, quiet: bool = False) -> dict[str, Any] | None:
    """Seed `devices` devices over `tenants` tenants unless at least that many bench devices exist."""
    if seeded_devices() >= devices and seeded_tenants() >= 1:
        return None
    return seed(tenants=tenants, devices=devices, quiet=quiet)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=1)
    parser.add_argument("--devices", type=int, default=1000, help="devices in all (split evenly over tenants)")
    parser.add_argument("--items-per-device", type=int, default=2)
    parser.add_argument("--jobs-per-device", type=int, default=1)
    parser.add_argument("--devices-per-account", type=int, default=DEVICES_PER_ACCOUNT)
    parser.add_argument("--no-reset", action="store_true", help="keep existing rows (fails if bench tenants exist)")
    parser.add_argument("--migrate", action="store_true", help="create the database if needed and migrate first")
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    import os

    if args.migrate:
        common.ensure_database(os.environ.get("DATABASE_URL"))
    common.django_setup()
    figures = seed(
        tenants=args.tenants,
        devices=args.devices,
        items_per_device=args.items_per_device,
        jobs_per_device=args.jobs_per_device,
        per_account=args.devices_per_account,
        reset=not args.no_reset,
        batch=args.batch,
        quiet=args.quiet,
    )
    import json

    print(json.dumps(figures))


if __name__ == "__main__":
    main()
