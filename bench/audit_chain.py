"""What the audit hash chain costs: events written per second with and without the chain, by one
writer and by four concurrent writers to one tenant (they queue on the chain head's row lock) and
to four tenants (they do not).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres python bench/audit_chain.py

It creates a database of its own next to the one named, migrates it, measures, drops it, prints
the figures and writes bench/results/audit_chain.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="events per scenario (default 2000)")
    arguments = parser.parse_args()
    server = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres").rsplit("/", 1)[0]
    name = f"portal_bench_audit_{secrets.token_hex(3)}"
    import psycopg

    with psycopg.connect(server + "/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    os.environ.update(DATABASE_URL=f"{server}/{name}", DJANGO_SETTINGS_MODULE="portal.settings")
    os.environ.pop("REDIS_URL", None)
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO, check=True)
        results = measure(arguments.events)
    finally:
        with psycopg.connect(server + "/postgres", autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(json.dumps(results, indent=2))
    output = REPO / "bench" / "results" / "audit_chain.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")


def measure(events: int) -> dict:
    import django

    django.setup()
    from django.db import connection, transaction
    from django.utils import timezone

    from tenants.audit import SYSTEM, audit_event_build, audit_record
    from tenants.audit_chain import chain_verify
    from tenants.models import AuditEvent, Tenant

    tenants = [Tenant.objects.create(slug=f"bench-{number}", name=f"Bench {number}") for number in range(4)]

    def unchained(tenant: Tenant, count: int) -> None:
        # The same row, inserted without linking it: what the chain is compared against.
        writer_chain = f"unchained:{secrets.token_hex(4)}"
        for number in range(count):
            with transaction.atomic():
                event = audit_event_build(actor=SYSTEM, tenant=tenant, action=f"bench.{number}")
                event.chain, event.sequence = writer_chain, number + 1
                event.previous_hash = event.row_hash = "0" * 64
                event.created_at = timezone.now()
                event.save()
        connection.close()

    def chained(tenant: Tenant, count: int) -> None:
        for number in range(count):
            with transaction.atomic():
                audit_record(actor=SYSTEM, tenant=tenant, action=f"bench.{number}")
        connection.close()

    def run(writer, targets: list[Tenant]) -> dict:
        per_thread = events // len(targets)
        threads = [threading.Thread(target=writer, args=(tenant, per_thread)) for tenant in targets]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        return {"writers": len(targets), "events": per_thread * len(targets), "seconds": round(seconds, 3),
                "events_per_second": round(per_thread * len(targets) / seconds, 1)}  # fmt: skip

    scenarios = {
        "unchained, 1 writer": run(unchained, tenants[:1]),
        "chained, 1 writer": run(chained, tenants[:1]),
        "unchained, 4 writers": run(unchained, tenants),
        "chained, 4 writers, one tenant": run(chained, [tenants[1]] * 4),
        "chained, 4 writers, four tenants": run(chained, tenants),
    }
    intact = all(chain_verify(f"tenant:{tenant.pk}").intact for tenant in tenants)
    bulk_started = time.perf_counter()
    with transaction.atomic():
        from tenants.audit import audit_record_many

        audit_record_many([audit_event_build(actor=SYSTEM, tenant=tenants[2], action="bulk") for _ in range(10_000)])
    bulk_seconds = time.perf_counter() - bulk_started
    return {
        "scenario": "audit_chain",
        "database": connection.vendor,
        "load_average": os.getloadavg(),
        "scenarios": scenarios,
        "chains_intact_after_concurrent_writes": intact,
        "bulk_10000_events_seconds": round(bulk_seconds, 3),
        "rows": AuditEvent.objects.count(),
    }


if __name__ == "__main__":
    main()
