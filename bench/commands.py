"""Scenario 2, command round trip: an admin's command, through two workers behind HAProxy, to a device and back.

    python bench/commands.py                     # 1,000 devices, 200 commands at 10 per second

Two portal workers (uvicorn, production settings) behind HAProxy (bench/haproxy.cfg, least
connections), all pinned to CPU 0; the simulator on CPU 1 connects every device through the proxy,
so each worker holds about half. This process then issues commands as an admin's page would
(devices.services.command_issue: a row, an audit event, a push through Redis after commit) to
random live devices, alternating `ping` and `run_backup`. The command reaches whichever worker
holds the device; the device acknowledges, runs it (a backup reports job_started, job_progress,
job_finished) and reports the result.

Latencies come from the command rows (all server clocks): created -> delivered (the push reached
the worker, which sent the command), -> acknowledged, -> finished (the result is stored). The
time command_issue() took in this process is reported too.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import common
import harness


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="commands issued per second")
    parser.add_argument("--no-proxy", action="store_true", help="connect devices to the workers directly")
    harness.common_args(parser, name="commands", base_port=8600)
    args = parser.parse_args(argv)
    common.stop_on_sigterm()
    env, pg, seeded = harness.prepare(args, args.devices)
    from devices import services
    from devices.models import Command, Device
    from tenants.audit import Actor

    results = harness.header("commands", args, argv, "commands.py")
    results.update(
        settings={
            "devices": args.devices,
            "commands": args.commands,
            "issue_rate": args.rate,
            "workers": args.workers,
            "proxy": None if args.no_proxy else "haproxy (bench/haproxy.cfg), leastconn",
        },
        seeded=seeded,
    )
    fleet = harness.Fleet(
        name=args.name,
        devices=args.devices,
        workers=args.workers,
        base_port=args.base_port,
        env=env,
        server_cpus=args.server_cpus,
        sim_cpus=args.sim_cpus,
        shards=args.shards,
        heartbeat=args.heartbeat,
        duration=args.max_seconds,
        proxy=not args.no_proxy,
        max_pending=args.max_pending,
        app=args.app,
    )
    try:
        results["connect_seconds"] = round(fleet.connect(args.devices), 1)
        time.sleep(3)
        live = list(Device.objects.filter(is_live=True).select_related("tenant"))
        results["live_devices"] = len(live)
        results["devices_per_worker"] = harness.workers_of_live_devices(pg)
        common.log(f"commands: {len(live)} devices live, per worker {results['devices_per_worker']}")
        actor = Actor(label="bench", role="owner")
        rng = random.Random(11)
        issued: list[tuple[int, str, float]] = []
        load_before = common.loadavg()
        cpu = common.CpuWindow(fleet.server_pids)
        started = time.monotonic()
        for number in range(args.commands):
            pause = started + number / args.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            device = rng.choice(live)
            kind = "ping" if number % 2 == 0 else "run_backup"
            parameters = {"protected_item_id": "item-0", "vault_id": "vault-1"} if kind == "run_backup" else {}
            call_started = time.perf_counter()
            command = services.command_issue(actor=actor, device=device, kind=kind, parameters=parameters)
            issued.append((command.pk, device.connection_channel.split("!", 1)[0], time.perf_counter() - call_started))
        deadline = time.monotonic() + 120
        pks = [pk for pk, _, _ in issued]
        while time.monotonic() < deadline:
            if Command.objects.filter(pk__in=pks, finished_at__isnull=True).count() == 0:
                break
            time.sleep(0.5)
        results["server_cpu_percent"] = cpu.percent()
        results["loadavg_before"], results["loadavg_after"] = load_before, common.loadavg()
        rows = {
            row["pk"]: row
            for row in Command.objects.filter(pk__in=pks).values(
                "pk", "kind", "status", "created_at", "delivered_at", "acknowledged_at", "finished_at"
            )
        }

        def since_created(row: dict[str, Any], field: str) -> float | None:
            return (row[field] - row["created_at"]).total_seconds() if row[field] else None

        by_status: dict[str, int] = {}
        for row in rows.values():
            by_status[row["status"]] = by_status.get(row["status"], 0) + 1
        results["statuses"] = by_status
        results["issue_call"] = harness.latency_summary([seconds for _, _, seconds in issued])
        for field in ("delivered_at", "acknowledged_at", "finished_at"):
            results[f"created_to_{field[:-3]}"] = harness.latency_summary(
                [since_created(row, field) for row in rows.values()]
            )
        for kind in ("ping", "run_backup"):
            results[f"round_trip_{kind}"] = harness.latency_summary(
                [since_created(row, "finished_at") for row in rows.values() if row["kind"] == kind]
            )
        per_worker: dict[str, list[float]] = {}
        for pk, worker, _ in issued:
            value = since_created(rows[pk], "finished_at")
            if value is not None:
                per_worker.setdefault(worker, []).append(value)
        results["round_trip_by_worker"] = {
            worker: harness.latency_summary(values) for worker, values in per_worker.items()
        }
        assert fleet.shards is not None
        results["simulator"] = {
            key: value
            for key, value in fleet.shards.stats().items()
            if key in ("ready", "commands", "errors", "closes", "command_push_latency_by_shard")
        }
    finally:
        fleet.stop()
        pg.reset_presence()
        pg.close()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path = common.write_result(args.name, results, args.results_dir)
    for key in (
        "issue_call",
        "created_to_delivered",
        "created_to_acknowledged",
        "created_to_finished",
        "round_trip_ping",
        "round_trip_run_backup",
    ):
        print(f"{key:<26} {results.get(key)}")
    print(f"{'statuses':<26} {results.get('statuses')}  workers {results.get('devices_per_worker')}")
    common.log(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
