"""How long erasing a large backup account takes, and how much memory: an account with 1,000 devices,
1,000,000 job rows, 100,000 log lines and 10,000 commands, next to another account of the same
tenant that must survive untouched. The erasure runs its steps (batched deletes, audit redaction),
then the residue scan over every table and text column.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres python bench/erasure.py

It creates a database of its own next to the one named, migrates it, seeds it with SQL, measures,
drops it, prints the figures and writes bench/results/erasure.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_mib() -> float:
    """Return this process's current resident memory in MiB (from /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seed(*, devices: int, jobs: int, log_lines: int, commands: int) -> dict[str, int]:
    """Create the tenant, the account to erase and a neighbour account, in SQL for speed."""
    from django.db import connection

    from devices import services as device_services
    from devices.models import Device
    from tenants.audit import SYSTEM, Actor, audit_event_build, audit_record_many
    from tenants.models import Tenant

    tenant = Tenant.objects.create(slug="bench", name="Bench")
    ids = {}
    for username in ("erase.me", "keep.me"):
        account = device_services.account_create(
            actor=SYSTEM, tenant=tenant, username=username, password="bench-password", email=f"{username}@bench.example"
        )
        ids[username] = account.pk
    # Distinct address ranges: two accounts behind one NAT share an address, and the residue scan
    # would rightly report the neighbour's rows (see docs/privacy.md).
    prefix = {"erase.me": "10.1.", "keep.me": "10.2."}
    with connection.cursor() as cursor:
        for username, account_id in ids.items():
            share = 1 if username == "erase.me" else 10  # the neighbour is a tenth of the size
            cursor.execute(
                """
                INSERT INTO devices_device (tenant_id, account_id, device_id, name, os, arch, client_version,
                    timezone, public_ip, token_hash, token_rotated_at, registered_at, is_live, connection_channel,
                    consents, has_failing_jobs)
                SELECT %s, %s, %s || '-dev-' || n, %s || ' laptop ' || n, 'linux', 'x86_64', '1.0', 'UTC',
                    (%s || (n / 256) %% 256 || '.' || n %% 256)::inet,
                    md5(%s || n), now(), now(), false, '', '{}', false
                FROM generate_series(1, %s) AS n
                """,
                [tenant.pk, account_id, username, username, prefix[username], username, devices // share],
            )
            cursor.execute(
                """
                INSERT INTO devices_job (tenant_id, device_id, job_id, kind, protected_item_id, vault_id, status,
                    progress_percent, files_done, files_total, bytes_read, bytes_uploaded, started_at, finished_at,
                    chunks_total, chunks_new, bytes_new, snapshot_id)
                SELECT %s, d.id, md5(d.id || '-' || n)::uuid, 'backup', 'item-1', 'vault-1', 'succeeded', 100,
                    10, 10, 1000, 100, now() - (n || ' minutes')::interval, now(), 1, 1, 1000, ''

                FROM devices_device d CROSS JOIN generate_series(1, %s) AS n WHERE d.account_id = %s
                """,
                [tenant.pk, jobs // devices, account_id],
            )
            cursor.execute(
                """
                INSERT INTO devices_joblogline (job_id, logged_at, level, message)
                SELECT j.id, now(), 'info', 'Backed up /home/' || %s || '/file'
                FROM devices_job j JOIN devices_device d ON d.id = j.device_id
                WHERE d.account_id = %s ORDER BY j.id LIMIT %s
                """,
                [username, account_id, log_lines // share],
            )
            cursor.execute(
                """
                INSERT INTO devices_command (tenant_id, device_id, command_id, kind, parameters, status, created_at,
                    expires_at, error)
                SELECT %s, d.id, md5('c' || d.id || '-' || n)::uuid, 'ping', '{}', 'succeeded', now(), now(), ''
                FROM devices_device d CROSS JOIN generate_series(1, %s) AS n WHERE d.account_id = %s
                """,
                [tenant.pk, commands // devices, account_id],
            )
        cursor.execute("ANALYZE")
    # One audit event per device, as registration writes them, so the redaction has work to do.
    for username, account_id in ids.items():
        events = [
            audit_event_build(
                actor=Actor(label=f"device:{device_id}", role="device", ip_address=str(address)),
                tenant=tenant,
                action="device.registered",
                target_type="device",
                target_id=str(pk),
                after={"account": username, "name": name},
            )
            for pk, device_id, name, address in Device.objects.filter(account_id=account_id).values_list(
                "pk", "device_id", "name", "public_ip"
            )
        ]
        audit_record_many(events)
    return {"tenant": tenant.pk, "account": ids["erase.me"], "neighbour": ids["keep.me"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--log-lines", type=int, default=100_000)
    parser.add_argument("--commands", type=int, default=10_000)
    arguments = parser.parse_args()
    server = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres").rsplit("/", 1)[0]
    name = f"portal_bench_erasure_{secrets.token_hex(3)}"
    import psycopg

    with psycopg.connect(server + "/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    os.environ.update(DATABASE_URL=f"{server}/{name}", DJANGO_SETTINGS_MODULE="portal.settings", DEBUG="0")
    os.environ.pop("REDIS_URL", None)
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO, check=True)
        import django

        django.setup()
        from django.db import connection as db

        from devices.models import Device, Job
        from portal.celery import app as celery_app
        from tenants import services_erasure as erasure
        from tenants.audit import Actor
        from tenants.audit_chain import chain_verify
        from tenants.models import Tenant
        from tenants.models_erasure import ErasureRequest, PrivacySettings
        from tenants.residue import residue_scan

        celery_app.conf.task_always_eager = True
        # The figure is the portal's own work: no licensing service runs beside the bench, and
        # its propagation (one signed request) is measured by the licensing tests, not here.
        from tenants import personal_data

        personal_data.recipient_unregister("licensing")
        started = time.monotonic()
        ids = seed(
            devices=arguments.devices, jobs=arguments.jobs, log_lines=arguments.log_lines, commands=arguments.commands
        )
        seeded_seconds = time.monotonic() - started
        tenant = Tenant.objects.get(pk=ids["tenant"])
        PrivacySettings.objects.create(tenant=tenant, grace_days=0)
        jobs_before = Job.objects.filter(device__account_id=ids["account"]).count()
        neighbour_jobs = Job.objects.filter(device__account_id=ids["neighbour"]).count()
        request = erasure.erasure_request_create(
            actor=Actor(label="bench", role="owner"),
            tenant=tenant,
            subject_kind="backup_account",
            subject_id=ids["account"],
            asked_by="bench",
            verification="bench",
        )
        identifiers = ["erase.me", "erase.me@bench.example", "erase.me-dev-1", "erase.me laptop 999"]
        db.close()
        rss_before, peak_before = rss_mib(), peak_rss_mib()
        began = time.monotonic()
        erasure.erasure_schedule(actor=Actor(label="bench", role="owner"), request=request)
        erasure.erasure_start(request_id=request.pk)
        advances = 0
        while (outcome := erasure.erasure_advance(request_id=request.pk)) in ("ran", "waiting"):
            advances += 1
        elapsed = time.monotonic() - began
        request.refresh_from_db()
        steps = {}
        previous = request.started_at
        for step in request.steps.order_by("position"):
            steps[step.name] = {
                **step.counts,
                "runs": step.runs,
                "seconds": round((step.finished_at - previous).total_seconds(), 2),
            }
            previous = step.finished_at
        finish_seconds = (request.finished_at - previous).total_seconds() if request.finished_at else None
        scan_began = time.monotonic()
        report = residue_scan(identifiers=identifiers)
        scan_seconds = time.monotonic() - scan_began
        result = {
            "devices": arguments.devices,
            "jobs": jobs_before,
            "log_lines": arguments.log_lines,
            "commands": arguments.commands,
            "neighbour_jobs_kept": Job.objects.filter(device__account_id=ids["neighbour"]).count() == neighbour_jobs,
            "neighbour_devices": Device.objects.filter(account_id=ids["neighbour"]).count(),
            "state": request.state,
            "last_outcome": outcome,
            "step_runs": advances,
            "erasure_seconds": round(elapsed, 1),
            "residue_scan_seconds_separately": round(scan_seconds, 1),
            "finish_seconds_including_scan": round(finish_seconds, 1) if finish_seconds is not None else None,
            "residue_clean": report.clean,
            "residue": ErasureRequest.objects.get(pk=request.pk).residue,
            "residue_after": report.as_list(),
            "tables_scanned": report.tables,
            "columns_scanned": report.columns,
            "rss_mib_before": round(rss_before, 1),
            "rss_mib_after": round(rss_mib(), 1),
            "peak_rss_mib_before": round(peak_before, 1),
            "peak_rss_mib_during": round(peak_rss_mib(), 1),
            "audit_chain_intact": chain_verify(f"tenant:{tenant.pk}").intact,
            "seed_seconds": round(seeded_seconds, 1),
            "steps": steps,
            "status": ErasureRequest.objects.get(pk=request.pk).state,
        }
        print(json.dumps(result, indent=2))
        out = REPO / "bench" / "results" / "erasure.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(server + "/postgres", autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
