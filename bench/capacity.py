"""Scenario 1, capacity: how many idle devices the portal holds, what each costs, against the bare baseline.

    python bench/capacity.py                     # 1k -> 5k -> 10k -> 20k, portal then baseline

The portal runs as in production: PostgreSQL, Redis (channels-redis), DEBUG off, heartbeat 30 s,
uvicorn with the sans-I/O websockets implementation and no per-message deflate. The open-file
limit (~20,000 per process) means 20,000 sockets need two processes on each side, so by default
every step runs two server processes on two ports (devices alternate between them) and two
simulator shards; the same shape is used at every step and for the baseline. Servers are pinned
to CPU 0, simulators to CPU 1 (taskset); PostgreSQL and Redis are not pinned.

At each step the simulators connect devices (at most --connect-rate per second) until every one
has been welcomed, wait --warmup seconds, then measure over --hold seconds: the server processes'
RSS (sum, from /proc/<pid>/statm, median of samples) and CPU (from /proc/<pid>/stat), the
heartbeats sent, and PostgreSQL's counters (rows of devices_device updated, commits) to check
that last-seen writes are coalesced. "Idle" is the servers' RSS after a ten-device warm-up has
connected and left, so one-off costs (database and Redis connections, thread pool) are not
charged to the first step's connections.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import common
import harness

TARGET_KIB_PER_CONNECTION = 40
TARGET_CPU_RATIO = 1.5


def measure_kind(kind: str, args: argparse.Namespace, env: dict[str, str], pg: harness.PgCounters) -> dict[str, Any]:
    ports = [args.base_port + (100 if kind == "baseline" else 0) + offset for offset in range(args.servers)]
    log_dir = common.LOG_DIR / args.name
    common.redis_flush(args.redis_url)
    pg.reset_presence()
    common.log(f"{kind}: starting {args.servers} server process(es) on ports {ports}, CPUs {args.server_cpus}")
    servers = harness.ServerSet(
        kind, ports, cpus=args.server_cpus, env=env, log_dir=log_dir, duration=args.max_seconds, app=args.app
    )
    shards = None
    figures: dict[str, Any] = {"kind": kind, "ports": ports, "steps": []}
    try:
        shards = harness.Shards(
            args.shards,
            devices=max(args.steps),
            ports=ports,
            cpus=args.sim_cpus,
            connect_rate=args.connect_rate,
            heartbeat=args.heartbeat,
            duration=args.max_seconds,
            log_dir=log_dir,
            max_pending=args.max_pending,
        )
        # Warm-up: a few devices connect and leave, so one-off costs are not counted per connection.
        shards.target(min(10, max(args.steps)), timeout=60)
        shards.target(0, timeout=60)
        time.sleep(min(3.0, args.idle_window))
        idle = [servers.rss_kib() for _ in range(3) if time.sleep(0.5) is None]
        figures["idle_rss_kib"] = int(statistics.median(idle))
        idle_cpu = common.CpuWindow(servers.pids)
        time.sleep(args.idle_window)
        figures["idle_cpu_percent"] = idle_cpu.percent()
        common.log(f"{kind}: idle RSS {figures['idle_rss_kib']} KiB, CPU {figures['idle_cpu_percent']}%")
        for step in args.steps:
            figures["steps"].append(measure_step(kind, step, args, servers, shards, pg, figures["idle_rss_kib"]))
            if not servers.alive():
                figures["error"] = "a server process died"
                break
    finally:
        if shards is not None:
            figures["simulator_summaries"] = [
                {key: summary.get(key) for key in ("ready", "closes", "stats", "errors", "rss_kib")}
                for summary in shards.stop()
            ]
        servers.stop()
        pg.reset_presence()
    return figures


def measure_step(
    kind: str,
    step: int,
    args: argparse.Namespace,
    servers: harness.ServerSet,
    shards: harness.Shards,
    pg: harness.PgCounters,
    idle_rss: int,
) -> dict[str, Any]:
    common.log(f"{kind}: connecting up to {step} devices")
    started = time.monotonic()
    try:
        reached = shards.target(step, timeout=args.ramp_timeout or step / 20 + 300)
    except TimeoutError:
        # Measure what is held: a server that cannot take more connections in time is a result too.
        reached = []
        common.log(f"{kind}: {step} devices not all connected in time; measuring those that are")
    ramp_seconds = time.monotonic() - started
    time.sleep(args.warmup)
    before_stats = shards.stats(reset=True)
    before_pg = pg.snapshot()
    load_before = common.loadavg()
    cpu = common.CpuWindow(servers.pids)
    sim_cpu = common.CpuWindow(shards.pids)
    samples = []
    deadline = time.monotonic() + args.hold
    while time.monotonic() < deadline:
        time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        samples.append(servers.rss_kib())
    cpu_percent, sim_cpu_percent = cpu.percent(), sim_cpu.percent()
    after_stats = shards.stats(reset=True)
    harness.wait_stats_flushed()
    pg_delta = harness.delta(pg.snapshot(), before_pg) if before_pg else {}
    connected = int(after_stats.get("ready", 0))
    rss = int(statistics.median(samples))
    heartbeats = harness.counter_delta(after_stats, before_stats, "sent", "heartbeat")
    pings = after_stats.get("ping_rtt_by_shard", [])
    result = {
        "target": step,
        "reached_target": bool(reached),
        "connected": connected,
        "live_in_database": pg.live_devices() if kind == "portal" else None,
        "ramp_seconds": round(ramp_seconds, 1),
        "ramp_reports": [{key: item.get(key) for key in ("shard", "ready", "seconds", "stopped")} for item in reached],
        "window_seconds": args.hold,
        "rss_kib": rss,
        "rss_kib_samples": samples,
        "kib_per_connection": round((rss - idle_rss) / max(connected, 1), 2),
        "cpu_percent": cpu_percent,
        "simulator_cpu_percent": sim_cpu_percent,
        "ping_rtt_p50_ms_worst_shard": harness.worst(pings, "p50_ms"),
        "ping_rtt_p99_ms_worst_shard": harness.worst(pings, "p99_ms"),
        "ping_rtt_max_ms_worst_shard": harness.worst(pings, "max_ms"),
        "heartbeats_sent": heartbeats,
        "closes_in_window": {
            code: count - before_stats.get("closes", {}).get(code, 0)
            for code, count in after_stats.get("closes", {}).items()
            if count - before_stats.get("closes", {}).get(code, 0)
        },
        "postgres": pg_delta,
        "loadavg_before": load_before,
        "loadavg_after": common.loadavg(),
    }
    if pg_delta and heartbeats:
        result["device_rows_updated_per_heartbeat"] = round(pg_delta["device_rows_updated"] / heartbeats, 3)
        result["commits_per_heartbeat"] = round(pg_delta["db_commits"] / heartbeats, 4)
    common.log(
        f"{kind} {step}: connected {connected}, RSS {rss} KiB ({result['kib_per_connection']} KiB/conn), "
        f"CPU {cpu_percent}% (simulators {sim_cpu_percent}%), ping p99 {result['ping_rtt_p99_ms_worst_shard']} ms, "
        f"heartbeats {heartbeats}, pg {pg_delta}, load {result['loadavg_after']}"
    )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="1000,5000,10000,20000")
    parser.add_argument("--hold", type=float, default=60.0, help="seconds measured at each step")
    parser.add_argument(
        "--warmup", type=float, default=15.0, help="seconds between a step's last welcome and its window"
    )
    parser.add_argument("--ramp-timeout", type=float, default=0.0, help="seconds to connect a step (0: steps/20+300)")
    parser.add_argument("--idle-window", type=float, default=5.0, help="seconds of idle CPU measured before the steps")
    parser.add_argument("--heartbeat", type=int, default=30)
    parser.add_argument("--connect-rate", type=float, default=400.0, help="new connections per second, all shards")
    parser.add_argument(
        "--max-pending",
        type=int,
        default=100,
        help="handshakes in flight at most, all shards: more only queues at the server and times out",
    )
    parser.add_argument("--servers", type=int, default=2, help="server processes (ports), each pinned to --server-cpus")
    parser.add_argument("--shards", type=int, default=2, help="simulator processes")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--sim-cpus", default="1")
    parser.add_argument("--kinds", default="portal,baseline")
    parser.add_argument("--base-port", type=int, default=8300)
    parser.add_argument(
        "--database-url", default=common.os.environ.get("BENCH_DATABASE_URL", common.DEFAULT_DATABASE_URL)
    )
    parser.add_argument("--redis-url", default=common.os.environ.get("BENCH_REDIS_URL", common.DEFAULT_REDIS_URL))
    parser.add_argument("--embedded", action="store_true", help="no PostgreSQL/Redis: SQLite and the in-memory layer")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="every process stops by itself after this")
    parser.add_argument("--baseline-from", default=None, help="a result file whose baseline to compare with")
    parser.add_argument("--results-dir", default=None)
    parser.add_argument("--name", default="capacity")
    parser.add_argument("--app", default=harness.DEFAULT_APP, help="ASGI app, e.g. tuned_asgi:application (bench/)")
    args = parser.parse_args(argv)
    common.stop_on_sigterm()
    args.steps = [int(step) for step in args.steps.split(",")]
    if args.embedded:
        args.database_url = args.redis_url = None
    common.apply_env(args.database_url, args.redis_url, args.heartbeat)
    common.ensure_database(args.database_url)
    common.django_setup()
    import seed

    seeded = seed.ensure_fleet(devices=max(args.steps))
    env = common.server_env(database_url=args.database_url, redis_url=args.redis_url, heartbeat=args.heartbeat)
    pg = harness.PgCounters(args.database_url)
    started = time.time()
    results: dict[str, Any] = {
        "scenario": "capacity",
        "command": "python bench/" + " ".join(["capacity.py", *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": common.machine_info(args.database_url, args.redis_url),
        "settings": {
            "steps": args.steps,
            "hold_seconds": args.hold,
            "warmup_seconds": args.warmup,
            "heartbeat_seconds": args.heartbeat,
            "connect_rate": args.connect_rate,
            "max_pending_handshakes": args.max_pending,
            "server_processes": args.servers,
            "simulator_processes": args.shards,
            "pinning": {
                "servers": f"taskset -c {args.server_cpus}",
                "simulators": f"taskset -c {args.sim_cpus}",
                "postgresql_and_redis": "not pinned",
            },
            "server": f"uvicorn {args.app} --ws websockets-sansio --ws-per-message-deflate false",
            "bench_tune": common.os.environ.get("BENCH_TUNE", "all") if args.app != harness.DEFAULT_APP else None,
            "database": "postgresql" if args.database_url else "sqlite (embedded)",
            "channel_layer": "channels-redis" if args.redis_url else "in-memory",
        },
        "seeded": seeded,
        "code": common.code_version(),
        "targets": {
            "connections": 20000,
            "kib_per_connection_max": TARGET_KIB_PER_CONNECTION,
            "cpu_ratio_to_baseline_max": TARGET_CPU_RATIO,
        },
    }
    try:
        for kind in args.kinds.split(","):
            results[kind] = measure_kind(kind, args, env, pg)
    finally:
        pg.close()
    if "baseline" not in results and args.baseline_from:
        # The baseline does not depend on the portal's code: reuse one measured earlier on this machine.
        earlier = json.loads(common.Path(args.baseline_from).read_text())
        results["baseline"] = {**earlier["baseline"], "from": args.baseline_from, "measured": earlier.get("started")}
    results["comparison"] = compare(results)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path = common.write_result(args.name, results, args.results_dir)
    print_table(results)
    common.log(f"wrote {path}")
    return results


def compare(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    portal = {step["target"]: step for step in results.get("portal", {}).get("steps", [])}
    baseline = {step["target"]: step for step in results.get("baseline", {}).get("steps", [])}
    previous: dict[str, dict[str, Any]] = {}
    for kind, steps in (("portal", portal), ("baseline", baseline)):
        for step in steps.values():
            last = previous.get(kind)
            if last is not None and step["connected"] > last["connected"]:
                step["marginal_kib_per_connection"] = round(
                    (step["rss_kib"] - last["rss_kib"]) / (step["connected"] - last["connected"]), 2
                )
            previous[kind] = step
    for target, step in portal.items():
        row: dict[str, Any] = {
            "devices": target,
            "portal_connected": step["connected"],
            "portal_kib_per_connection": step["kib_per_connection"],
            "portal_marginal_kib_per_connection": step.get("marginal_kib_per_connection"),
            "portal_cpu_percent": step["cpu_percent"],
            "portal_ping_p99_ms": step["ping_rtt_p99_ms_worst_shard"],
        }
        other = baseline.get(target)
        if other:
            row.update(
                baseline_connected=other["connected"],
                baseline_kib_per_connection=other["kib_per_connection"],
                baseline_marginal_kib_per_connection=other.get("marginal_kib_per_connection"),
                baseline_cpu_percent=other["cpu_percent"],
                baseline_ping_p99_ms=other["ping_rtt_p99_ms_worst_shard"],
                memory_ratio=round(step["kib_per_connection"] / max(other["kib_per_connection"], 0.01), 2),
                cpu_ratio=round(step["cpu_percent"] / max(other["cpu_percent"], 0.1), 2),
            )
        row["meets_memory_target"] = step["kib_per_connection"] <= TARGET_KIB_PER_CONNECTION
        if "cpu_ratio" in row:
            row["meets_cpu_target"] = row["cpu_ratio"] <= TARGET_CPU_RATIO
        row["held_all"] = step["connected"] >= target
        rows.append(row)
    return rows


def print_table(results: dict[str, Any]) -> None:
    print(
        f"{'devices':>8} {'portal conn':>11} {'KiB/conn':>8} {'CPU%':>6} {'p99 ms':>8} | "
        f"{'base conn':>9} {'KiB/conn':>8} {'CPU%':>6} {'p99 ms':>8} | {'mem x':>5} {'cpu x':>5}"
    )
    for row in results["comparison"]:
        print(
            f"{row['devices']:>8} {row['portal_connected']:>11} {row['portal_kib_per_connection']:>8} "
            f"{row['portal_cpu_percent']:>6} {str(row['portal_ping_p99_ms']):>8} | "
            f"{str(row.get('baseline_connected', '-')):>9} {str(row.get('baseline_kib_per_connection', '-')):>8} "
            f"{str(row.get('baseline_cpu_percent', '-')):>6} {str(row.get('baseline_ping_p99_ms', '-')):>8} | "
            f"{str(row.get('memory_ratio', '-')):>5} {str(row.get('cpu_ratio', '-')):>5}"
        )


if __name__ == "__main__":
    main()
