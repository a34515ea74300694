"""The usage report at 100,000 devices in 1,000 tenants: time and memory to build it, and to take it.

    python bench/usage_report.py --database-url postgres://postgres@127.0.0.1:5432/portal_w6_bench

Seeds the fleet with bench/seed.py (COPY; skipped when a fleet of exactly this shape is there):
100,000 devices in 1,000 tenants, five devices per backup account (20,000 accounts), two protected
items per device (200,000). Then, in this process, with production settings (PostgreSQL, DEBUG off):

- build: licensing.selectors.usage_report_build, --runs times: wall time, SQL queries, JSON and
  gzip sizes; then once more under tracemalloc for the peak of Python memory, and with the
  process's RSS sampled every 5 ms for its growth;
- store: licensing.services.usage_report_create (build and insert into the outbox);
- tenant part: the bytes of one tenant's part, as the tenant page reads them;
- receive: licensing.services_receiver.report_receive on the stored body, the service's work
  (decompress, validate against the allow-list, billing figures, insert), with the same memory
  measures.

Reports and received reports of earlier runs are deleted first. Prints the figures and writes
bench/results/<name>.json (--name usage_report).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import common


class RssSampler:
    """The process's RSS every few milliseconds while a block runs: its growth over the start."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_kib = 0
        self.start_kib = 0
        self._stop = threading.Event()

    def __enter__(self) -> RssSampler:
        self.start_kib = self.peak_kib = common.proc_rss_kib(os.getpid())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kib = max(self.peak_kib, common.proc_rss_kib(os.getpid()))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, common.proc_rss_kib(os.getpid()))

    @property
    def growth_mib(self) -> float:
        return round((self.peak_kib - self.start_kib) / 1024, 1)


def measured(function: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """Run once for time and queries, then once under tracemalloc and the RSS sampler."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    gc.collect()
    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        result = function()
        seconds = time.perf_counter() - started
    return result, {"seconds": round(seconds, 3), "queries": len(queries.captured_queries)}


def memory_of(function: Callable[[], Any]) -> dict[str, Any]:
    gc.collect()
    with RssSampler() as rss:
        tracemalloc.start()
        started = time.perf_counter()
        function()
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return {
        "python_peak_mib": round(peak / 1024 / 1024, 1),
        "rss_growth_mib": rss.growth_mib,
        "seconds_under_tracemalloc": round(seconds, 3),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--target-seconds", type=float, default=10.0, help="the build must take less (median)")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", common.DEFAULT_DATABASE_URL))
    parser.add_argument("--embedded", action="store_true", help="SQLite in PORTAL_DATA_DIR instead of PostgreSQL")
    parser.add_argument("--redis-url", default="", help="unused; accepted like the other benches")
    parser.add_argument("--results-dir", default=None)
    parser.add_argument("--name", default="usage_report")
    args = parser.parse_args(argv)
    database_url = None if args.embedded else args.database_url
    common.apply_env(database_url, None)
    os.environ["LICENSING_ROLE"] = "both"
    common.ensure_database(database_url)
    common.django_setup()

    import seed
    from django.db import connection

    from licensing import payload as payload_format
    from licensing import selectors, services, services_receiver
    from licensing.models import ReceivedReport, RegisteredPortal, UsageReport
    from tenants.models import Tenant

    results: dict[str, Any] = {
        "code": common.code_version(),
        "scenario": "usage_report",
        "command": "python bench/" + " ".join(["usage_report.py", *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": common.machine_info(database_url),
        "database": connection.vendor,
        "load_before": common.loadavg(),
    }
    common.log(f"seeding {args.devices} devices in {args.tenants} tenants unless they are there")
    results["seeded"] = seed.ensure_seeded(tenants=args.tenants, devices=args.devices, quiet=True)
    UsageReport.objects.all().delete()
    ReceivedReport.objects.all().delete()
    licence = services.licence_current()
    assert licence is not None
    results["fleet"] = {
        "tenants": Tenant.objects.count(),
        "devices": args.devices,
        "backup_accounts": seed.Layout(args.tenants, args.devices).accounts,
        "protected_items": args.devices * 2,
    }

    period = date(2026, 1, 1)
    builds = []
    built = None
    for run in range(args.runs):
        built, figures = measured(
            lambda run=run: selectors.usage_report_build(serial=licence.serial, period=period + timedelta(days=run))
        )
        builds.append(figures)
        common.log(f"build {run + 1}: {figures['seconds']} s, {figures['queries']} queries")
    assert built is not None
    build_memory = memory_of(lambda: selectors.usage_report_build(serial=licence.serial, period=period))
    medians = statistics.median(figure["seconds"] for figure in builds)
    results["build"] = {
        "runs": builds,
        "median_seconds": round(medians, 3),
        "max_seconds": max(figure["seconds"] for figure in builds),
        "queries": builds[-1]["queries"],
        "json_bytes": built.serialised.size,
        "gzip_bytes": len(built.serialised.body),
        "devices_in_report": built.device_count,
        "tenants_in_report": len(built.tenant_ids),
        **build_memory,
        "meets_target": medians < args.target_seconds,
        "target_seconds": args.target_seconds,
    }
    results["build"]["python_peak_vs_json"] = round(
        build_memory["python_peak_mib"] * 1024 * 1024 / max(built.serialised.size, 1), 3
    )

    stored, store_figures = measured(lambda: services.usage_report_create(period=date(2026, 2, 1))[0])
    results["store"] = store_figures
    tenant = Tenant.objects.order_by("-pk").first()
    part, part_figures = measured(lambda: selectors.usage_report_tenant_part(report=stored, tenant=tenant))
    results["tenant_part"] = {**part_figures, "bytes": len(part or b""), "tenant": "the last (the most to skip)"}

    portal = RegisteredPortal.objects.get(serial=licence.serial)
    body = bytes(stored.body)

    def receive(key: str | None = None) -> Any:
        return services_receiver.report_receive(
            portal=portal,
            idempotency_key=key or str(uuid.uuid4()),
            body=body,
            content_encoding="gzip",
            source_ip="127.0.0.1",
        )

    (receipt, created), receive_figures = measured(receive)
    assert created and receipt["sha256"] == stored.sha256
    ReceivedReport.objects.all().delete()
    results["receive"] = {**receive_figures, **memory_of(receive)}
    data = payload_format.decompress(body, limit=10**10)
    results["receive"]["devices"] = json.loads(data)["portal"]["features"]["devices"]
    UsageReport.objects.all().delete()
    ReceivedReport.objects.all().delete()
    results["load_after"] = common.loadavg()

    build = results["build"]
    print(
        f"build: median {build['median_seconds']} s (max {build['max_seconds']} s) for {build['devices_in_report']} "
        f"devices in {build['tenants_in_report']} tenants, {build['queries']} queries; JSON "
        f"{build['json_bytes'] / 1e6:.1f} MB, gzip {build['gzip_bytes'] / 1e6:.2f} MB; Python peak "
        f"{build['python_peak_mib']} MiB, RSS +{build['rss_growth_mib']} MiB"
        f"{'' if build['meets_target'] else '  <-- MISSES THE TARGET'}"
    )
    print(f"store (build + insert): {results['store']['seconds']} s")
    print(f"tenant part: {results['tenant_part']['seconds']} s for {results['tenant_part']['bytes']} bytes")
    receive_row = results["receive"]
    print(
        f"receive (service): {receive_row['seconds']} s, Python peak {receive_row['python_peak_mib']} MiB, "
        f"RSS +{receive_row['rss_growth_mib']} MiB"
    )
    path = common.write_result(args.name, results, args.results_dir)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
