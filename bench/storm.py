"""Scenario 5, reconnect storm: every device loses its connection at once; how long until all are back?

    python bench/storm.py                        # 10,000 devices, two workers, drop all
    python bench/storm.py --mode restart         # the same, by restarting both workers
    python bench/storm.py --mode redis           # restart Redis (the bench's own) under the fleet

The fleet first connects gently (at most --max-pending handshakes in flight) and stays connected
for --settle seconds (> 60 s, so that each device's backoff starts again from its first step, as
the agent's does after a connection that lasted a minute). Then the simulator lets every device
behave on its own (no connection pacing) and either drops every connection at once (`drop`) or
the bench restarts both portal workers (`restart`: SIGTERM, then new processes on the same ports).
Each device reconnects after the agent's full-jitter backoff: uniform in [0, min(60 s, 1 s x 2^n)].

`redis` stops the bench's own Redis server (started on --own-redis-port: never the machine's
shared one), waits --redis-down seconds and starts it again; whatever the workers do about it
(their device sockets may survive or close) is what is measured: the fleet is watched until 15 s
after Redis is back, `dropped` says how many devices were cut, and a device never cut counts as
back at once.

In every mode, --commands commands (ping, one bulk action over that many random devices) are
issued right after the cut, while the devices are away; each must end `succeeded` exactly once
(the simulator counts executions and repeated deliveries, and never runs a command twice, as the
agent does). Redis's connected clients are counted before the cut and after the fleet is back.

Reported: seconds until 50/90/99/100% of the devices were welcomed again, failed attempts (HTTP
errors, timeouts after 20 s, refused connections), server CPU during the storm, the number of
devices the database shows live at the end, the commands' outcome and the Redis client counts.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import common
import harness

# In mode redis, how long after Redis is back the fleet is watched for devices that dropped.
REDIS_WATCH_EXTRA_SECONDS = 15.0


def _rss_mib(pids: list[int]) -> float:
    return round(sum(common.proc_rss_kib(pid) for pid in pids) / 1024, 1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--mode", choices=["drop", "restart", "redis"], default="drop")
    parser.add_argument("--commands", type=int, default=1000, help="commands issued while the devices are away")
    parser.add_argument("--own-redis-port", type=int, default=6391)
    parser.add_argument("--redis-down", type=float, default=5.0, help="seconds Redis stays down (mode redis)")
    parser.add_argument("--settle", type=float, default=65.0, help="seconds connected before the storm")
    parser.add_argument("--backlog", type=int, default=harness.DEFAULT_BACKLOG, help="each worker's accept queue")
    parser.add_argument(
        "--hold-after", type=float, default=0.0, help="seconds held after the fleet is back, before the memory reading"
    )
    parser.add_argument("--storm-timeout", type=float, default=900.0, help="give up waiting after this")
    harness.common_args(parser, name="storm", base_port=8700)
    parser.set_defaults(shards=2)
    args = parser.parse_args(argv)
    common.stop_on_sigterm()
    own_redis = None
    if not args.embedded:
        # Its own Redis, so that the client count is the fleet's alone and `redis` mode may kill it.
        own_redis = harness.OwnRedis(args.own_redis_port, log_dir=common.LOG_DIR / args.name)
        args.redis_url = own_redis.url
    env, pg, seeded = harness.prepare(args, args.devices)
    from devices import services
    from devices.models import Command, Device
    from tenants.audit import Actor
    from tenants.models import Tenant

    results = harness.header("storm", args, argv, "storm.py")
    results.update(
        settings={
            "devices": args.devices,
            "mode": args.mode,
            "workers": args.workers,
            "settle_seconds": args.settle,
            "commands_during_the_cut": args.commands,
            "redis": f"the bench's own redis-server on port {args.own_redis_port}" if own_redis else None,
            "backlog": args.backlog,
            "backoff": "full jitter, [0, min(60, 1 x 2^attempt)] s, or a 4013's retry_after + [0, 0.5] s; "
            "open timeout 20 s",
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
        max_pending=args.max_pending,
        app=args.app,
        backlog=args.backlog,
    )
    assert fleet.shards is not None
    shards = fleet.shards
    try:
        results["connect_seconds"] = round(fleet.connect(args.devices), 1)
        common.log(f"storm: {args.devices} devices connected in {results['connect_seconds']} s; settling")
        time.sleep(args.settle)
        results["live_before"] = pg.live_devices()
        results["server_rss_mib_before"] = _rss_mib(fleet.server_pids)
        results["redis_clients_before"] = own_redis.connected_clients() if own_redis else None
        # The workers' own: the bench process issues the storm's commands, and its connections are
        # no part of the portal's.
        results["redis_clients_of_workers_before"] = own_redis.clients_of(fleet.server_pids) if own_redis else None
        executed_before = shards.stats().get("stats", {}).get("executed", 0)
        # From here on every device acts on its own, as a real fleet does: no pacing.
        shards.send("pending 1000000")
        shards.send("rate 1000000")
        load_before = common.loadavg()
        started = time.monotonic()
        if args.mode == "drop":
            shards.send("storm")
            shards.wait("storm_started", timeout=30)
            cpu = common.CpuWindow(fleet.server_pids)
        elif args.mode == "redis":
            assert own_redis is not None
            # The workers may keep their devices through a Redis restart: watch for a while.
            shards.send(f"watch {args.redis_down + REDIS_WATCH_EXTRA_SECONDS}")
            shards.wait("storm_started", timeout=30)
            own_redis.stop()
            cpu = common.CpuWindow(fleet.server_pids)
        else:
            shards.send("watch")
            shards.wait("storm_started", timeout=30)
            old_pids = fleet.servers.pids
            fleet.servers.stop()
            results["restart_stop_seconds"] = round(time.monotonic() - started, 2)
            fleet.servers = harness.ServerSet(
                "portal",
                fleet.worker_ports,
                cpus=args.server_cpus,
                env=env,
                log_dir=fleet.log_dir,
                app=args.app,
                backlog=args.backlog,
            )
            results["restart_seconds"] = round(time.monotonic() - started, 2)
            results["old_server_pids_stopped"] = len(old_pids)
            cpu = common.CpuWindow(fleet.server_pids)
        issued_pks = issue_while_away(args, services, Device, Tenant, Actor)
        results["commands_issued_seconds"] = round(time.monotonic() - started, 2)
        if args.mode == "redis":
            assert own_redis is not None
            time.sleep(max(0.0, args.redis_down - (time.monotonic() - started)))
            own_redis.start()
            results["redis_down_seconds"] = round(time.monotonic() - started, 2)
        try:
            done = shards.wait("storm_done", timeout=args.storm_timeout)
            results["completed"] = True
        except TimeoutError:
            done = []
            results["completed"] = False
            shards.send("storm_report")
            results["progress_at_timeout"] = shards.wait("storm_progress", timeout=30)
        results["storm_seconds"] = round(time.monotonic() - started, 1)
        results["server_cpu_percent"] = cpu.percent()
        results["loadavg_before"], results["loadavg_after"] = load_before, common.loadavg()
        results["shards"] = done
        results["dropped"] = sum(item.get("dropped", 0) for item in done) if done else None
        for mark in ("t50_s", "t90_s", "t99_s", "t100_s"):
            values = [item[mark] for item in done if mark in item]
            results[mark] = max(values) if len(values) == len(done) and values else None
        failures: dict[str, int] = {}
        for item in done:
            for key, value in item.get("stats", {}).items():
                failures[key] = failures.get(key, 0) + value
        results["attempts"] = failures
        results["commands"] = commands_outcome(Command, issued_pks, timeout=120)
        stats_after = shards.stats()
        counters = stats_after.get("stats", {})
        results["commands"]["executed_by_devices"] = counters.get("executed", 0) - executed_before
        results["commands"]["run_twice"] = max(0, results["commands"]["executed_by_devices"] - len(issued_pks))
        results["commands"]["redelivered_total"] = counters.get("redelivered", 0)
        time.sleep(10)  # let reconnects and pools settle before counting Redis clients
        results["redis_clients_after"] = own_redis.connected_clients() if own_redis else None
        results["redis_clients_of_workers_after"] = own_redis.clients_of(fleet.server_pids) if own_redis else None
        results["live_after"] = pg.live_devices()
        time.sleep(args.hold_after)
        # The same workers before and after, unless they were restarted: what the storm left behind.
        results["server_rss_mib_after"] = _rss_mib(fleet.server_pids)
        results["devices_per_worker_after"] = harness.workers_of_live_devices(pg)
    finally:
        fleet.stop()
        pg.reset_presence()
        pg.close()
        if own_redis is not None:
            own_redis.stop()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path = common.write_result(args.name, results, args.results_dir)
    print(
        {
            key: results.get(key)
            for key in (
                "completed",
                "dropped",
                "t50_s",
                "t90_s",
                "t99_s",
                "t100_s",
                "attempts",
                "server_cpu_percent",
                "live_before",
                "live_after",
                "server_rss_mib_before",
                "server_rss_mib_after",
                "commands",
                "redis_clients_before",
                "redis_clients_after",
                "redis_clients_of_workers_before",
                "redis_clients_of_workers_after",
            )
        }
    )
    common.log(f"wrote {path}")
    return results


def issue_while_away(args: Any, services: Any, device_model: Any, tenant_model: Any, actor_class: Any) -> list[int]:
    """Issue one ping each to --commands random devices of the bench tenant, as one bulk action."""
    if not args.commands:
        return []
    tenant = tenant_model.objects.get(slug="bench-0")
    # The fleet's own devices (the simulator plays devices 0 .. --devices - 1), not any of the seeded ones.
    fleet_ids = [common.device_uid(index) for index in range(args.devices)]
    pks = list(device_model.objects.filter(tenant=tenant, device_id__in=fleet_ids).values_list("pk", flat=True))
    chosen = set(random.Random(5).sample(pks, min(args.commands, len(pks))))
    devices = list(device_model.objects.filter(pk__in=chosen).select_related("tenant"))
    commands = services.commands_issue_bulk(
        actor=actor_class(label="bench", role="owner"), tenant=tenant, devices=devices, kind="ping"
    )
    return [command.pk for command in commands]


def commands_outcome(command_model: Any, pks: list[int], *, timeout: float) -> dict[str, Any]:
    """Wait until every command has ended (or the timeout); count them by status."""
    started = time.monotonic()
    while pks and time.monotonic() - started < timeout:
        if not command_model.objects.filter(pk__in=pks, finished_at__isnull=True).exists():
            break
        time.sleep(0.5)
    by_status: dict[str, int] = {}
    for status in command_model.objects.filter(pk__in=pks).values_list("status", flat=True):
        by_status[status] = by_status.get(status, 0) + 1
    return {
        "issued": len(pks),
        "by_status": by_status,
        "lost": len(pks) - by_status.get("succeeded", 0),
        "seconds_until_all_ended_after_the_fleet_was_back": round(time.monotonic() - started, 1),
    }


if __name__ == "__main__":
    main()
