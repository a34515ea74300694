"""Scenario 5, reconnect storm: every device loses its connection at once; how long until all are back?

    python bench/storm.py                        # 10,000 devices, two workers, drop all
    python bench/storm.py --mode restart         # the same, by restarting both workers

The fleet first connects gently (at most --max-pending handshakes in flight) and stays connected
for --settle seconds (> 60 s, so that each device's backoff starts again from its first step, as
the agent's does after a connection that lasted a minute). Then the simulator lets every device
behave on its own (no connection pacing) and either drops every connection at once (`drop`) or
the bench restarts both portal workers (`restart`: SIGTERM, then new processes on the same ports).
Each device reconnects after the agent's full-jitter backoff: uniform in [0, min(60 s, 1 s x 2^n)].

Reported: seconds until 50/90/99/100% of the devices were welcomed again, failed attempts (HTTP
errors, timeouts after 20 s, refused connections), server CPU during the storm, and the number
of devices the database shows live at the end.
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
    parser.add_argument("--mode", choices=["drop", "restart"], default="drop")
    parser.add_argument("--settle", type=float, default=65.0, help="seconds connected before the storm")
    parser.add_argument("--storm-timeout", type=float, default=900.0, help="give up waiting after this")
    harness.common_args(parser, name="storm", base_port=8700)
    parser.set_defaults(shards=2)
    args = parser.parse_args(argv)
    common.stop_on_sigterm()
    env, pg, seeded = harness.prepare(args, args.devices)
    results = harness.header("storm", args, argv, "storm.py")
    results.update(
        settings={
            "devices": args.devices,
            "mode": args.mode,
            "workers": args.workers,
            "settle_seconds": args.settle,
            "backoff": "full jitter, [0, min(60, 1 x 2^attempt)] s; open timeout 20 s",
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
    )
    assert fleet.shards is not None
    shards = fleet.shards
    try:
        results["connect_seconds"] = round(fleet.connect(args.devices), 1)
        common.log(f"storm: {args.devices} devices connected in {results['connect_seconds']} s; settling")
        time.sleep(args.settle)
        results["live_before"] = pg.live_devices()
        # From here on every device acts on its own, as a real fleet does: no pacing.
        shards.send("pending 1000000")
        shards.send("rate 1000000")
        load_before = common.loadavg()
        started = time.monotonic()
        if args.mode == "drop":
            shards.send("storm")
            shards.wait("storm_started", timeout=30)
            cpu = common.CpuWindow(fleet.server_pids)
        else:
            shards.send("watch")
            shards.wait("storm_started", timeout=30)
            old_pids = fleet.servers.pids
            fleet.servers.stop()
            results["restart_stop_seconds"] = round(time.monotonic() - started, 2)
            fleet.servers = harness.ServerSet(
                "portal", fleet.worker_ports, cpus=args.server_cpus, env=env, log_dir=fleet.log_dir, app=args.app
            )
            results["restart_seconds"] = round(time.monotonic() - started, 2)
            results["old_server_pids_stopped"] = len(old_pids)
            cpu = common.CpuWindow(fleet.server_pids)
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
        for mark in ("t50_s", "t90_s", "t99_s", "t100_s"):
            values = [item[mark] for item in done if mark in item]
            results[mark] = max(values) if len(values) == len(done) and values else None
        failures: dict[str, int] = {}
        for item in done:
            for key, value in item.get("stats", {}).items():
                failures[key] = failures.get(key, 0) + value
        results["attempts"] = failures
        time.sleep(3)
        results["live_after"] = pg.live_devices()
        results["devices_per_worker_after"] = harness.workers_of_live_devices(pg)
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
                "completed",
                "t50_s",
                "t90_s",
                "t99_s",
                "t100_s",
                "attempts",
                "server_cpu_percent",
                "live_before",
                "live_after",
            )
        }
    )
    common.log(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
