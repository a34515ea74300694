"""The floor under scenario 2: what one HTTP request costs a portal worker, layer by layer.

    python bench/api_floor.py

One portal worker (uvicorn, production settings: PostgreSQL, channels-redis) pinned to CPU 0,
serving bench/floor_asgi.py: the portal's application plus floor views that each do less than an
API request. This process (CPU 1) keeps --connections keep-alive connections busy, closed loop,
for --seconds per case, --repeat times, and reads the worker's CPU time from /proc. The figure of
a case is the worker's CPU per request (the least of the repeats: on a shared machine a neighbour
only ever adds), and so the requests one core could serve at most.

The cases, each adding to the one before:

1. bare ASGI: uvicorn answering with a fixed body, no Django;
2. a Django view behind the full middleware stack (sessions, CSRF, authentication, OTP, the API
   key middleware, tenants, axes), no query;
3. the same with one ORM SELECT by primary key;
4. a DRF view with the API's authentication (bearer key), permission and throttles;
5. the API's GET of one device;
6. the API's POST of a ping command to a device that is not connected (stored, audited with the
   hash chain, told to browsers; nothing reaches a device).

Scenario 2's server CPU per command (bench/commands.py) is case 6 plus the device's side (the
command pushed, delivered, answered, stored) and the browser's push.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from typing import Any

import common
import harness
from commands import API_THROTTLE, HttpConnection, bench_credentials

CASES = [
    ("bare ASGI (uvicorn, no Django)", "GET", "/bench/floor/bare", False),
    ("Django view, full middleware, no query", "GET", "/bench/floor/django", False),
    ("Django view + one ORM SELECT", "GET", "/bench/floor/orm/{pk}", False),
    ("DRF view: API key, permission, throttles", "GET", "/bench/floor/drf", True),
    ("API: GET one device", "GET", "/api/v1/t/{tenant}/devices/{pk}/", True),
    ("API: POST a ping command (device offline)", "POST", "/api/v1/t/{tenant}/devices/{pk}/commands/", True),
]


async def load(
    *, port: int, method: str, paths: list[str], headers: dict[str, str], body: bytes, connections: int, seconds: float
) -> dict[str, Any]:
    """Keep `connections` requests in flight for `seconds`; count answers by status."""
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + seconds
    rng = random.Random(5)

    async def worker() -> None:
        connection = await HttpConnection.open(port)
        try:
            while time.perf_counter() < deadline:
                status, _, _ = await connection.request(method, rng.choice(paths), headers, body)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            connection.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return statuses


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000, help="devices the GET and POST cases pick from")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per case and repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--cases", default="", help="numbers of the cases to run (1-6, comma-separated); default all")
    harness.common_args(parser, name="api_floor", base_port=8700, workers=1)
    args = parser.parse_args(argv)
    common.stop_on_sigterm()
    env, pg, seeded = harness.prepare(args, args.devices)
    env["API_THROTTLE_USER"] = API_THROTTLE
    pg.close()
    from devices.models import Command, Device

    tenant_slug = "bench-0"
    api_key, _, tenant_id = bench_credentials(tenant_slug)
    device_pks = list(Device.objects.filter(tenant_id=tenant_id).order_by("pk").values_list("pk", flat=True))
    device_pks = device_pks[: args.devices]
    results = harness.header("api_floor", args, argv, "api_floor.py")
    results.update(
        settings={
            "worker": "one uvicorn process, bench/floor_asgi.py (the portal's application and floor views)",
            "connections": args.connections,
            "seconds_per_case": args.seconds,
            "repeats": args.repeat,
            "figure": "worker CPU per request, least of the repeats",
        },
        seeded=seeded,
        cases=[],
    )
    if args.sim_cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(cpu) for cpu in args.sim_cpus.split(",")})
    port = args.base_port
    last_command = Command.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    servers = harness.ServerSet(
        "portal",
        [port],
        cpus=args.server_cpus,
        env=env,
        log_dir=common.LOG_DIR / args.name,
        app="floor_asgi:application",
    )
    try:
        chosen = {int(number) for number in args.cases.split(",") if number} or set(range(1, len(CASES) + 1))
        cases = [case for number, case in enumerate(CASES, 1) if number in chosen]
        for label, method, template, authenticated in cases:
            paths = [template.format(tenant=tenant_slug, pk=pk) for pk in device_pks]
            headers = {"Content-Type": "application/json"}
            if authenticated:
                headers["Authorization"] = f"Bearer {api_key}"
            body = json.dumps({"kind": "ping"}).encode() if method == "POST" else b""
            runs = []
            warm_up = {"port": port, "method": method, "paths": paths, "headers": headers, "body": body}
            asyncio.run(load(**warm_up, connections=2, seconds=1))
            for _ in range(args.repeat):
                cpu = common.CpuWindow(servers.pids)
                ticks_before = sum(common.proc_cpu_ticks(pid) for pid in servers.pids)
                started = time.monotonic()
                statuses = asyncio.run(
                    load(
                        port=port,
                        method=method,
                        paths=paths,
                        headers=headers,
                        body=body,
                        connections=args.connections,
                        seconds=args.seconds,
                    )
                )
                elapsed = time.monotonic() - started
                ticks = sum(common.proc_cpu_ticks(pid) for pid in servers.pids) - ticks_before
                answered = sum(statuses.values())
                runs.append(
                    {
                        "statuses": {str(status): count for status, count in statuses.items()},
                        "requests_per_second": round(answered / elapsed, 1),
                        "worker_cpu_percent": cpu.percent(),
                        "worker_cpu_ms_per_request": round(ticks * 1000 / common.CLK_TCK / max(answered, 1), 3),
                        "loadavg": common.loadavg(),
                    }
                )
            ok = all(set(run["statuses"]) <= {"200", "202"} for run in runs)
            cost = min(run["worker_cpu_ms_per_request"] for run in runs)
            case = {
                "case": label,
                "request": f"{method} {template}",
                "all_answers_2xx": ok,
                "worker_cpu_ms_per_request": cost,
                "worker_cpu_ms_per_request_median": statistics.median(run["worker_cpu_ms_per_request"] for run in runs),
                "requests_per_second_per_core_at_most": round(1000 / cost, 1) if cost else None,
                "runs": runs,
            }
            results["cases"].append(case)
            common.log(
                f"{label}: {cost} ms of worker CPU a request (median {case['worker_cpu_ms_per_request_median']}), "
                f"<= {case['requests_per_second_per_core_at_most']}/s a core{'' if ok else ', NOT ALL 2xx'}"
            )
    finally:
        servers.stop()
        # The POST case queued commands for devices that are not connected: later benches would
        # deliver them all when those devices connect.
        Command.objects.filter(pk__gt=last_command, status=Command.Status.QUEUED).update(
            status=Command.Status.CANCELLED
        )
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path = common.write_result(args.name, results, args.results_dir)
    print(f"{'case':<48} {'CPU ms/request':>14} {'at most /s/core':>15}")
    for case in results["cases"]:
        print(
            f"{case['case']:<48} {case['worker_cpu_ms_per_request']:>14} "
            f"{str(case['requests_per_second_per_core_at_most']):>15}"
        )
    common.log(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
