"""Scenario 6, bulk command: one admin action sends `ping` to 10,000 live devices.

    python bench/bulk.py

Two portal workers (CPU 0), two simulator shards (CPU 1), 10,000 devices connected. This process
calls devices.services.commands_issue_bulk for every live device of the tenant, as the bulk form
does: one command row and one audit event per device in one transaction, then one push per
device's connection through Redis after commit. Reported: how long that call took, then, from
the command rows, how long until every command was delivered and until every result was stored,
and the distribution per command (created -> delivered, created -> finished).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import common
import harness


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--kind", default="ping")
    parser.add_argument("--finish-timeout", type=float, default=900.0)
    harness.common_args(parser, name="bulk", base_port=8800)
    parser.set_defaults(shards=2)
    args = parser.parse_args(argv)
    if args.embedded:
        # The in-memory channel layer lives inside one process, as the embedded default's one web
        # process does: two workers would each see the other's devices as their own.
        args.workers = 1
    common.stop_on_sigterm()
    env, pg, seeded = harness.prepare(args, args.devices)
    from devices import selectors, services
    from devices.models import Command, Device
    from tenants.audit import Actor

    results = harness.header("bulk", args, argv, "bulk.py")
    results.update(settings={"devices": args.devices, "kind": args.kind, "workers": args.workers}, seeded=seeded)
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
        max_pending=args.max_pending,
        app=args.app,
    )
    try:
        results["connect_seconds"] = round(fleet.connect(args.devices), 1)
        time.sleep(5)
        tenant_id = Device.objects.filter(is_live=True).values_list("tenant_id", flat=True).first()
        from tenants.models import Tenant

        tenant = Tenant.objects.get(pk=tenant_id)
        live_pks = list(Device.objects.filter(tenant=tenant, is_live=True).values_list("pk", flat=True))
        devices = list(selectors.devices_for_bulk(tenant=tenant, device_pks=live_pks))
        results["live_devices"] = len(devices)
        common.log(f"bulk: {len(devices)} live devices; issuing {args.kind} to all")
        load_before = common.loadavg()
        cpu = common.CpuWindow(fleet.server_pids)
        started = time.monotonic()
        commands = services.commands_issue_bulk(
            actor=Actor(label="bench", role="owner"), tenant=tenant, devices=devices, kind=args.kind
        )
        results["issue_seconds"] = round(time.monotonic() - started, 2)
        pks = [command.pk for command in commands]
        marks: dict[str, float | None] = {"all_delivered_s": None, "all_finished_s": None}
        progress = []
        deadline = started + args.finish_timeout
        while time.monotonic() < deadline:
            waiting_delivery = Command.objects.filter(pk__in=pks, delivered_at__isnull=True).count()
            waiting_result = Command.objects.filter(pk__in=pks, finished_at__isnull=True).count()
            now = round(time.monotonic() - started, 1)
            progress.append({"t": now, "undelivered": waiting_delivery, "unfinished": waiting_result})
            if waiting_delivery == 0 and marks["all_delivered_s"] is None:
                marks["all_delivered_s"] = now
            if waiting_result == 0:
                marks["all_finished_s"] = now
                break
            time.sleep(1.0)
        results.update(marks)
        results["progress"] = progress[:: max(1, len(progress) // 60)]
        results["server_cpu_percent"] = cpu.percent()
        results["loadavg_before"], results["loadavg_after"] = load_before, common.loadavg()
        rows = list(Command.objects.filter(pk__in=pks).values("status", "created_at", "delivered_at", "finished_at"))
        statuses: dict[str, int] = {}
        for row in rows:
            statuses[row["status"]] = statuses.get(row["status"], 0) + 1
        results["statuses"] = statuses
        results["created_to_delivered"] = harness.latency_summary(
            [(row["delivered_at"] - row["created_at"]).total_seconds() for row in rows if row["delivered_at"]]
        )
        results["created_to_finished"] = harness.latency_summary(
            [(row["finished_at"] - row["created_at"]).total_seconds() for row in rows if row["finished_at"]]
        )
        assert fleet.shards is not None
        results["simulator"] = {
            key: value
            for key, value in fleet.shards.stats().items()
            if key in ("ready", "commands", "errors", "closes")
        }
    finally:
        fleet.stop()
        pg.reset_presence()
        pg.close()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path = common.write_result(args.name, results, args.results_dir)
    print(
        {
            key: results.get(key)
            for key in (
                "live_devices",
                "issue_seconds",
                "all_delivered_s",
                "all_finished_s",
                "created_to_delivered",
                "created_to_finished",
                "statuses",
                "server_cpu_percent",
            )
        }
    )
    common.log(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
