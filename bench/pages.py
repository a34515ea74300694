"""Scenario 4, admin pages at 100,000 devices in one tenant: server time and SQL queries per page.

    python bench/pages.py

Seeds 100,000 devices in tenant `bench-0` unless they are there, marks every fifth one live (so
the "online" filter has 20,000 rows to page through; put back afterwards), then requests each page
with Django's test Client in this process, logged in as the tenant's owner, with production
settings (PostgreSQL, DEBUG off). Server time is the time Client.get() takes: URL resolution,
middleware, the view, its queries and the template. Each page is requested --warmup times
unmeasured, then --requests times measured (median and p95), then once more inside
CaptureQueriesContext for the query count and the slowest query, which is EXPLAINed (ANALYZE)
when a page misses a target.

If the device pages are missing (devices/urls.py not routed), the same cases are measured on
devices.selectors.device_list directly (one page of the queryset), and the result says so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import common

TARGET_MEDIAN_MS, TARGET_P95_MS, TARGET_QUERIES = 50.0, 100.0, 10
TENANT = "bench-0"


def cases(slug: str) -> list[tuple[str, str]]:
    base = f"/t/{slug}/devices/"
    return [
        ("devices: first page", base),
        ("devices: search, rare (srv-0421)", base + "?search=srv-0421"),
        ("devices: search, common (laptop)", base + "?search=laptop"),
        ("devices: filter live=online", base + "?live=online"),
        ("devices: filter os=macOS 15", base + "?os=macOS+15"),
        ("devices: filter failing=yes", base + "?failing=yes"),
        ("devices: sort -last_seen", base + "?sort=-last_seen"),
        ("devices: deep page 500", base + "?page=500"),
        ("devices: sort -last_seen, page 500", base + "?sort=-last_seen&page=500"),
        ("tenant dashboard", f"/t/{slug}/"),
        ("accounts: first page (20,000 accounts)", f"/t/{slug}/accounts/"),
    ]


def cursor_cases(slug: str, tenant: Any) -> list[tuple[str, str]]:
    """The deep pages as the pager's Next link reaches them: with the cursor of the previous page's
    last row (page 500 of 100,000 devices; a smaller page of a smaller seed)."""
    from devices import selectors
    from portal import keyset

    base = f"/t/{slug}/devices/"
    found = []
    for sort, label in (("name", "deep page"), ("-last_seen", "sort -last_seen, page")):
        queryset = selectors.device_list(tenant=tenant, filters=selectors.DeviceFilters(sort=sort))
        page = max(2, min(500, queryset.count() // 50))
        cursor = keyset.cursor_of(queryset, queryset[(page - 1) * 50 - 1])
        found.append(
            (f"devices: {label} {page} through Next (cursor)", f"{base}?sort={sort}&page={page}&after={cursor}")
        )
    return found


def selector_cases() -> list[tuple[str, dict[str, Any], int]]:
    return [
        ("selector: first page", {}, 1),
        ("selector: search, rare (srv-0421)", {"search": "srv-0421"}, 1),
        ("selector: search, common (laptop)", {"search": "laptop"}, 1),
        ("selector: filter live=online", {"live": True}, 1),
        ("selector: filter os=macOS 15", {"os": "macOS 15"}, 1),
        ("selector: sort -last_seen", {"sort": "-last_seen"}, 1),
        ("selector: deep page 500", {}, 500),
    ]


def timed(function: Any, warmup: int, requests: int) -> tuple[list[float], Any]:
    result = None
    for _ in range(warmup):
        result = function()
    durations = []
    for _ in range(requests):
        started = time.perf_counter()
        result = function()
        durations.append(time.perf_counter() - started)
    return durations, result


def summarise(
    name: str, durations: list[float], queries: list[dict[str, Any]], extra: dict[str, Any]
) -> dict[str, Any]:
    median = statistics.median(durations) * 1000
    p95 = common.percentile(durations, 0.95) * 1000
    slowest = max(queries, key=lambda query: float(query.get("time") or 0), default=None)
    row = {
        "case": name,
        "requests": len(durations),
        "median_ms": round(median, 2),
        "p95_ms": round(p95, 2),
        "max_ms": round(max(durations) * 1000, 2),
        "queries": len(queries),
        "query_ms_total": round(sum(float(query.get("time") or 0) for query in queries) * 1000, 2),
        "slowest_query_ms": round(float(slowest["time"]) * 1000, 2) if slowest else None,
        "slowest_query": slowest["sql"][:2000] if slowest else None,
        **extra,
    }
    row["meets_targets"] = median <= TARGET_MEDIAN_MS and p95 <= TARGET_P95_MS and len(queries) <= TARGET_QUERIES
    common.log(
        f"{name}: median {row['median_ms']} ms, p95 {row['p95_ms']} ms, {len(queries)} queries "
        f"(slowest {row['slowest_query_ms']} ms){'' if row['meets_targets'] else '  <-- MISSES A TARGET'}"
    )
    return row


def explain(sql: str) -> list[str]:
    from django.db import connection

    if connection.vendor != "postgresql" or not sql.lstrip().upper().startswith("SELECT"):
        return []
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
        return [row[0] for row in cursor.fetchall()]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--live-every", type=int, default=5, help="mark every Nth device live while measuring")
    parser.add_argument("--selectors", action="store_true", help="also time devices.selectors.device_list directly")
    parser.add_argument(
        "--database-url", default=common.os.environ.get("BENCH_DATABASE_URL", common.DEFAULT_DATABASE_URL)
    )
    parser.add_argument("--redis-url", default=common.os.environ.get("BENCH_REDIS_URL", common.DEFAULT_REDIS_URL))
    parser.add_argument("--embedded", action="store_true", help="no PostgreSQL/Redis: SQLite and local memory")
    parser.add_argument("--results-dir", default=None)
    parser.add_argument("--name", default="pages")
    args = parser.parse_args(argv)
    common.stop_on_sigterm()
    if args.embedded:
        args.database_url = args.redis_url = None
    common.apply_env(args.database_url, args.redis_url)
    common.ensure_database(args.database_url)
    common.django_setup()
    import seed
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import NoReverseMatch, reverse

    from devices import selectors
    from devices.models import Device
    from tenants.models import Tenant

    seeded = None
    tenant = Tenant.objects.filter(slug=TENANT).first()
    if tenant is None or Device.objects.filter(tenant=tenant).count() < args.devices or not seed.seeded_devices():
        seeded = seed.seed(tenants=1, devices=args.devices)
        tenant = Tenant.objects.get(slug=TENANT)
    device_count = Device.objects.filter(tenant=tenant).count()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    with connection.cursor() as cursor:
        cursor.execute(
            # Only the rows that change, as devices coming online do: rewriting every row would
            # leave a dead version of each in every index for the deep pages to step over.
            "UPDATE devices_device SET is_live = (id %% %s = 0) WHERE tenant_id = %s "
            "AND is_live IS DISTINCT FROM (id %% %s = 0)",
            [args.live_every, tenant.pk, args.live_every],
        )
        if connection.vendor == "postgresql":
            # Earlier runs' dead rows gone first, as autovacuum would have (harness.PgCounters.vacuum);
            # then only the online marking above leaves rows rewritten, as a live fleet does.
            cursor.execute("ANALYZE devices_device")
    owner = get_user_model().objects.get(username=seed.BENCH_OWNER)
    client = Client()
    client.force_login(owner)
    try:
        reverse("tenant-devices", kwargs={"tenant_slug": TENANT})
        pages_exist = True
    except NoReverseMatch:
        pages_exist = False

    results: dict[str, Any] = {
        "scenario": "pages",
        "command": "python bench/" + " ".join(["pages.py", *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": common.machine_info(args.database_url, args.redis_url),
        "settings": {
            "devices_in_tenant": device_count,
            "live_devices": device_count // args.live_every,
            "requests_per_case": args.requests,
            "warmup_per_case": args.warmup,
            "client": "django.test.Client in-process (server time, no network), DEBUG off",
            "database": "postgresql" if args.database_url else "sqlite (embedded)",
        },
        "seeded": seeded,
        "code": common.code_version(),
        "targets": {"median_ms": TARGET_MEDIAN_MS, "p95_ms": TARGET_P95_MS, "queries": TARGET_QUERIES},
        "pages_exist": pages_exist,
        "loadavg_before": common.loadavg(),
        "cases": [],
    }
    try:
        if pages_exist:
            for name, url in cases(TENANT) + cursor_cases(TENANT, tenant):

                def get(url: str = url) -> Any:
                    response = client.get(url)
                    if response.status_code != 200:
                        raise RuntimeError(f"{url} answered {response.status_code}")
                    return response

                durations, response = timed(get, args.warmup, args.requests)
                with CaptureQueriesContext(connection) as captured:
                    get()
                row = summarise(
                    name, durations, captured.captured_queries, {"url": url, "bytes": len(response.content)}
                )
                if not row["meets_targets"] and row["slowest_query"]:
                    row["slowest_query_plan"] = explain(
                        captured.captured_queries[
                            max(
                                range(len(captured.captured_queries)),
                                key=lambda i: float(captured.captured_queries[i]["time"]),
                            )
                        ]["sql"]
                    )
                results["cases"].append(row)
        if args.selectors or not pages_exist:
            for name, options, page in selector_cases():
                filters = selectors.DeviceFilters(**options)

                def run(filters: selectors.DeviceFilters = filters, page: int = page) -> list[Device]:
                    queryset = selectors.device_list(tenant=tenant, filters=filters)
                    return selectors.page_of(queryset, offset=(page - 1) * 50, limit=51)

                durations, _ = timed(run, args.warmup, args.requests)
                with CaptureQueriesContext(connection) as captured:
                    run()
                results["cases"].append(summarise(name, durations, captured.captured_queries, {"selector": True}))
    finally:
        with connection.cursor() as cursor:
            cursor.execute("UPDATE devices_device SET is_live = false WHERE tenant_id = %s AND is_live", [tenant.pk])
    results["loadavg_after"] = common.loadavg()
    results["all_meet_targets"] = all(row["meets_targets"] for row in results["cases"])
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path = common.write_result(args.name, results, args.results_dir)
    print(f"{'case':<42} {'median ms':>9} {'p95 ms':>8} {'queries':>7} {'slowest q ms':>12}")
    for row in results["cases"]:
        print(
            f"{row['case']:<42} {row['median_ms']:>9} {row['p95_ms']:>8} {row['queries']:>7} "
            f"{str(row['slowest_query_ms']):>12}"
        )
    common.log(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
