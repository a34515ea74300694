"""Scenario 3, status ingest: how many device messages per second the portal accepts and persists.

    python bench/ingest.py                       # 500 devices at 5, 10 and 15 messages/s each

One portal process (uvicorn, production settings, pinned to CPU 0) and one simulator (CPU 1). At
each level every device sends `status` and `heartbeat` in turn at the given rate (below the
protocol's 20 messages/s per device) for --seconds; then each sends one message of an unknown
type, whose `error` answer (no database work) proves that the consumer has handled every earlier
message of that connection (a consumer handles its messages in order). Accepted rate = (messages
sent - messages refused with an error frame) / (time from the first message to the last answer).

Persisted: after the flush interval of devices.ingest (2 s) the bench reads back each device's
protected item `item-0`, whose size carries the sequence number of the status that set it, and
its last-seen time; a device counts as persisted when both show its last message.

The same rows are then written with psycopg directly (COPY, and INSERT via executemany) into a
scratch table, one row per message (device, time, type, JSON body): the ratio says how far the
portal's per-message cost is from the database's raw write rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

import common
import harness

TARGET_MESSAGES_PER_SECOND = 5000


def run_level(
    rate: float, args: argparse.Namespace, shards: harness.Shards, servers: harness.ServerSet, pg: harness.PgCounters
) -> dict[str, Any]:
    from devices.ingest import FLUSH_INTERVAL

    common.log(f"ingest: {args.devices} devices x {rate} messages/s for {args.seconds} s")
    load_before = common.loadavg()
    before_pg = pg.snapshot()
    cpu, sim_cpu = common.CpuWindow(servers.pids), common.CpuWindow(shards.pids)
    started_wall = datetime.now(UTC)
    shards.send(f"ingest {rate} {args.seconds}")
    done = shards.wait("ingest_done", timeout=args.seconds + 240)
    cpu_percent, sim_cpu_percent = cpu.percent(), sim_cpu.percent()
    time.sleep(2 * FLUSH_INTERVAL + 1)
    harness.wait_stats_flushed()
    pg_delta = harness.delta(pg.snapshot(), before_pg) if before_pg else {}
    sent: dict[str, int] = {}
    errors: dict[str, int] = {}
    last_seq: dict[int, int] = {}
    for item in done:
        for key, value in item["sent"].items():
            sent[key] = sent.get(key, 0) + value
        for key, value in item["errors"].items():
            errors[key] = errors.get(key, 0) + value
        last_seq.update({int(index): seq for index, seq in item["last_seq"].items()})
    messages = sent.get("status", 0) + sent.get("heartbeat", 0)
    refused = sum(errors.values())
    drained = max(item["drained_seconds"] for item in done)
    send_seconds = max(item["send_seconds"] for item in done)
    persisted = check_persisted(last_seq, started_wall)
    lost = sum(sum(item["closes"].values()) for item in done)
    result = {
        # A connection lost mid-level loses the messages it had in flight: the rate is then not valid.
        "valid": lost == 0 and all(item["not_drained"] == 0 for item in done),
        "devices": sum(item["devices"] for item in done),
        "rate_per_device": rate,
        "offered_per_second": round(messages / send_seconds, 1),
        "messages_sent": messages,
        "sent_by_type": sent,
        "refused": errors,
        "blocked_by_backpressure": sum(item["blocked"] for item in done),
        "not_drained": sum(item["not_drained"] for item in done),
        "connections_lost": sum(sum(item["closes"].values()) for item in done),
        "send_seconds": send_seconds,
        "drained_seconds": drained,
        "accepted_per_second": round((messages - refused) / drained, 1),
        "persisted": persisted,
        "server_cpu_percent": cpu_percent,
        "simulator_cpu_percent": sim_cpu_percent,
        "postgres": pg_delta,
        "loadavg_before": load_before,
        "loadavg_after": common.loadavg(),
    }
    common.log(
        f"ingest {rate}/s/device: offered {result['offered_per_second']}/s, accepted "
        f"{result['accepted_per_second']}/s, persisted {persisted['devices_persisted']}/{persisted['devices']}, "
        f"server CPU {cpu_percent}%, load {result['loadavg_after']}"
    )
    return result


def check_persisted(last_seq: dict[int, int], since: datetime) -> dict[str, Any]:
    """Compare each device's stored inventory and last-seen time with its last message."""
    from devices.models import Device, ProtectedItem

    uids = {common.device_uid(index): index for index in last_seq}
    devices = dict(Device.objects.filter(device_id__in=list(uids)).values_list("device_id", "pk"))
    seen = dict(Device.objects.filter(pk__in=devices.values()).values_list("pk", "last_seen_at"))
    sizes = dict(
        ProtectedItem.objects.filter(device_id__in=devices.values(), item_id="item-0").values_list(
            "device_id", "size_bytes"
        )
    )
    inventory_ok = seen_ok = 0
    for uid, pk in devices.items():
        seq = last_seq[uids[uid]]
        last_status = seq if seq % 2 else seq - 1  # odd sequence numbers are statuses
        if sizes.get(pk) == max(last_status, 0):
            inventory_ok += 1
        if seen.get(pk) is not None and seen[pk] >= since:
            seen_ok += 1
    both = min(inventory_ok, seen_ok)
    return {
        "devices": len(last_seq),
        "inventory_current": inventory_ok,
        "last_seen_current": seen_ok,
        "devices_persisted": both,
    }


def raw_writes(database_url: str | None, rows: int) -> dict[str, Any]:
    """Write `rows` message rows with psycopg directly: COPY, then INSERT (executemany)."""
    if not database_url or not database_url.startswith(("postgres://", "postgresql://")):
        return {"skipped": "needs PostgreSQL"}
    import psycopg
    from psycopg.types.json import Jsonb
    from seed import status_message

    now = datetime.now(UTC)
    body_status = status_message(0, 1)
    body_heartbeat = {"v": 1, "type": "heartbeat"}
    data = [
        (i % 1000 + 1, now, "status" if i % 2 else "heartbeat", Jsonb(body_status if i % 2 else body_heartbeat))
        for i in range(rows)
    ]
    figures: dict[str, Any] = {"rows": rows}
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("DROP TABLE IF EXISTS bench_raw_messages")
        connection.execute(
            "CREATE TABLE bench_raw_messages (id bigserial PRIMARY KEY, device_id bigint NOT NULL, "
            "received_at timestamptz NOT NULL, type text NOT NULL, body jsonb NOT NULL)"
        )
        try:
            started = time.perf_counter()
            copy_sql = "COPY bench_raw_messages (device_id, received_at, type, body) FROM STDIN"
            with connection.transaction(), connection.cursor() as cursor, cursor.copy(copy_sql) as copy:
                for row in data:
                    copy.write_row(row)
            elapsed = time.perf_counter() - started
            figures["copy_rows_per_second"] = round(rows / elapsed, 1)
            connection.execute("TRUNCATE bench_raw_messages")
            started = time.perf_counter()
            with connection.transaction(), connection.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO bench_raw_messages (device_id, received_at, type, body) VALUES (%s, %s, %s, %s)", data
                )
            elapsed = time.perf_counter() - started
            figures["insert_rows_per_second"] = round(rows / elapsed, 1)
        finally:
            connection.execute("DROP TABLE IF EXISTS bench_raw_messages")
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--rates", default="2,4,8,12", help="messages per second per device, one level each")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each level")
    parser.add_argument("--pause", type=float, default=5.0, help="seconds between levels")
    parser.add_argument("--heartbeat", type=int, default=30)
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--sim-cpus", default="1")
    parser.add_argument("--base-port", type=int, default=8500)
    parser.add_argument("--raw-rows", type=int, default=100_000)
    parser.add_argument(
        "--database-url", default=common.os.environ.get("BENCH_DATABASE_URL", common.DEFAULT_DATABASE_URL)
    )
    parser.add_argument("--redis-url", default=common.os.environ.get("BENCH_REDIS_URL", common.DEFAULT_REDIS_URL))
    parser.add_argument("--embedded", action="store_true", help="no PostgreSQL/Redis: SQLite and the in-memory layer")
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--results-dir", default=None)
    parser.add_argument("--name", default="ingest")
    parser.add_argument("--app", default=harness.DEFAULT_APP, help="ASGI app, e.g. tuned_asgi:application (bench/)")
    args = parser.parse_args(argv)
    common.stop_on_sigterm()
    if args.embedded:
        args.database_url = args.redis_url = None
    common.apply_env(args.database_url, args.redis_url, args.heartbeat)
    common.ensure_database(args.database_url)
    common.django_setup()
    import seed

    seeded = seed.ensure_fleet(devices=args.devices)
    env = common.server_env(database_url=args.database_url, redis_url=args.redis_url, heartbeat=args.heartbeat)
    pg = harness.PgCounters(args.database_url)
    pg.reset_presence()
    common.redis_flush(args.redis_url)
    ports = [args.base_port + offset for offset in range(args.servers)]
    log_dir = common.LOG_DIR / args.name
    results: dict[str, Any] = {
        "scenario": "ingest",
        "command": "python bench/" + " ".join(["ingest.py", *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": common.machine_info(args.database_url, args.redis_url),
        "settings": {
            "devices": args.devices,
            "rates_per_device": args.rates,
            "seconds_per_level": args.seconds,
            "server_processes": args.servers,
            "app": args.app,
            "bench_tune": common.os.environ.get("BENCH_TUNE", "all") if args.app != harness.DEFAULT_APP else None,
            "pinning": {
                "servers": f"taskset -c {args.server_cpus}",
                "simulator": f"taskset -c {args.sim_cpus}",
                "postgresql_and_redis": "not pinned",
            },
            "database": "postgresql" if args.database_url else "sqlite (embedded)",
            "channel_layer": "channels-redis" if args.redis_url else "in-memory",
        },
        "seeded": seeded,
        "code": common.code_version(),
        "target_messages_per_second": TARGET_MESSAGES_PER_SECOND,
        "levels": [],
    }
    servers = harness.ServerSet("portal", ports, cpus=args.server_cpus, env=env, log_dir=log_dir, app=args.app)
    shards = None
    try:
        shards = harness.Shards(
            1,
            devices=args.devices,
            ports=ports,
            cpus=args.sim_cpus,
            connect_rate=400,
            heartbeat=args.heartbeat,
            duration=args.max_seconds,
            log_dir=log_dir,
        )
        shards.target(args.devices, timeout=args.devices / 100 + 120)
        time.sleep(5)
        for rate in [float(value) for value in args.rates.split(",")]:
            level = run_level(rate, args, shards, servers, pg)
            results["levels"].append(level)
            if not level["valid"]:
                common.log("ingest: connections were lost (the server fell too far behind); stopping here")
                break
            time.sleep(args.pause)
    finally:
        if shards is not None:
            shards.stop()
        servers.stop()
        pg.reset_presence()
        pg.close()
    valid = [level for level in results["levels"] if level["valid"]] or results["levels"]
    best = max(valid, key=lambda level: level["accepted_per_second"])
    total_messages = best["messages_sent"]
    results["raw"] = raw_writes(args.database_url, min(args.raw_rows, max(total_messages, 1000)))
    results["best"] = {
        "accepted_per_second": best["accepted_per_second"],
        "rate_per_device": best["rate_per_device"],
        "persisted": best["persisted"],
        "meets_target": best["accepted_per_second"] >= TARGET_MESSAGES_PER_SECOND
        and best["persisted"]["devices_persisted"] == best["persisted"]["devices"],
    }
    raw = results["raw"]
    if "copy_rows_per_second" in raw:
        results["best"]["ratio_to_raw_copy"] = round(best["accepted_per_second"] / raw["copy_rows_per_second"], 3)
        results["best"]["ratio_to_raw_insert"] = round(best["accepted_per_second"] / raw["insert_rows_per_second"], 3)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path = common.write_result(args.name, results, args.results_dir)
    print(
        json.dumps(
            {
                "levels": [
                    {
                        key: level[key]
                        for key in (
                            "rate_per_device",
                            "offered_per_second",
                            "accepted_per_second",
                            "persisted",
                            "server_cpu_percent",
                            "loadavg_after",
                        )
                    }
                    for level in results["levels"]
                ],
                "raw": raw,
                "best": results["best"],
            },
            indent=2,
        )
    )
    common.log(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
