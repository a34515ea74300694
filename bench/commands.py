"""Scenario 2, command round trip: REST API request -> device -> result stored -> pushed to a browser.

    python bench/commands.py                              # 1,000 devices; 5..80 commands/s
    python bench/commands.py --devices 20000 --shards 2   # the same at 20,000 connected

Two portal workers (uvicorn, production settings: PostgreSQL, channels-redis) behind HAProxy
(bench/haproxy.cfg, least connections), pinned to CPU 0. The simulator (CPU 1) holds the devices:
through the proxy up to --proxy-devices-max devices (HAProxy's one process needs two sockets per
connection and has 20,000 open files), directly on the two worker ports above that. This process
(CPU 1 too) plays the admin and the browser, both through the proxy:

- the browser: a websocket on /ws/t/<tenant>/fleet/ with a logged-in session cookie, which
  receives every `command_status` push of the tenant;
- the admin: keep-alive HTTP connections that POST /api/v1/t/<tenant>/devices/<pk>/commands/
  {"kind": "ping"} with an API key, open loop at a fixed rate per level, to random live devices.

HAProxy names the worker that served each API request (X-Served-By); the device's worker is in its
connection channel, so every command is counted as same-worker or cross-worker. The round trip of a
command is from the moment its request was written to the moment the browser received its
`succeeded` push. The bare baseline is a websocket echo (ping/pong) round trip against the bare
`websockets` server (bench/baseline_server.py) holding the same number of connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from typing import Any

import common
import harness

# The API's per-admin throttle (1,200 a minute by default) would cap the bench at 20 commands/s.
API_THROTTLE = "1000000/min"


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; enough of the protocol for JSON requests and answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> HttpConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict, bytes]:
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the proxy closed the connection")
        status = int(status_line.split()[1])
        answer_headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            answer_headers[name.strip().lower()] = value.strip()
        answer = await self.reader.readexactly(int(answer_headers.get("content-length", "0")))
        return status, answer_headers, answer

    def close(self) -> None:
        self.writer.close()


def bench_credentials(tenant_slug: str) -> tuple[str, str, int]:
    """Return an API key and a session key for the bench tenant's owner, and the tenant's id."""
    import seed
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore

    from tenants import services as tenant_services
    from tenants.audit import Actor
    from tenants.models import Tenant

    tenant = Tenant.objects.get(slug=tenant_slug)
    owner = get_user_model().objects.get(username=seed.BENCH_OWNER)
    issued = tenant_services.api_key_create(
        actor=Actor(label="bench", role="owner"), tenant=tenant, user=owner, name="bench commands"
    )
    session = SessionStore()
    session[SESSION_KEY] = str(owner.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = owner.get_session_auth_hash()
    session.create()
    return issued.raw_key, session.session_key or "", tenant.pk


class Browser:
    """The admin's browser: the tenant's live fleet websocket, timing every command status push."""

    def __init__(self) -> None:
        self.finished_at: dict[int, float] = {}
        self.statuses: dict[str, int] = {}
        self.events = 0

    async def run(self, port: int, tenant_slug: str, session_key: str, ready: asyncio.Event) -> None:
        from websockets.asyncio.client import connect

        url = f"ws://127.0.0.1:{port}/ws/t/{tenant_slug}/fleet/"
        headers = {"Cookie": f"sessionid={session_key}", "Origin": "http://127.0.0.1"}
        async with connect(url, additional_headers=headers, compression=None, max_queue=None) as socket:
            ready.set()
            async for frame in socket:
                now = time.perf_counter()
                event = json.loads(frame)
                self.events += 1
                if event.get("kind") != "command_status":
                    continue
                status = event.get("status", "")
                if status in ("succeeded", "failed", "cancelled", "expired"):
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                    self.finished_at.setdefault(int(event["command"]), now)


async def issue_level(
    *,
    port: int,
    tenant_slug: str,
    api_key: str,
    devices: list[tuple[int, str]],
    rate: float,
    seconds: float,
    connections: int,
    browser: Browser,
    rng: random.Random,
) -> dict[str, Any]:
    """Issue commands open loop at `rate` for `seconds`; wait for their pushes; summarise."""
    pool: asyncio.Queue[HttpConnection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await HttpConnection.open(port))
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    body = json.dumps({"kind": "ping"}).encode()
    sent: dict[int, tuple[float, float, bool]] = {}  # command id -> (written, answered, cross-worker)
    failures: dict[str, int] = {}
    late_starts = 0

    async def one(device_pk: int, device_worker: str) -> None:
        connection = await pool.get()
        written = time.perf_counter()
        try:
            status, answer_headers, answer = await connection.request(
                "POST", f"/api/v1/t/{tenant_slug}/devices/{device_pk}/commands/", headers, body
            )
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as error:
            failures[type(error).__name__] = failures.get(type(error).__name__, 0) + 1
            connection.close()
            pool.put_nowait(await HttpConnection.open(port))
            return
        pool.put_nowait(connection)
        if status != 202:
            failures[str(status)] = failures.get(str(status), 0) + 1
            return
        served_by = answer_headers.get("x-served-by", "")
        sent[int(json.loads(answer)["id"])] = (written, time.perf_counter(), served_by != device_worker)

    total = max(1, int(rate * seconds))
    tasks = []
    started = time.perf_counter()
    for number in range(total):
        delay = started + number / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.05:
            late_starts += 1
        device_pk, worker = rng.choice(devices)
        tasks.append(asyncio.create_task(one(device_pk, worker)))
    await asyncio.gather(*tasks)
    issued_seconds = time.perf_counter() - started
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline and any(pk not in browser.finished_at for pk in sent):
        await asyncio.sleep(0.05)
    while not pool.empty():
        pool.get_nowait().close()
    done = [pk for pk in sent if pk in browser.finished_at]
    last = max((browser.finished_at[pk] for pk in done), default=started)
    round_trips = [browser.finished_at[pk] - sent[pk][0] for pk in done]
    return {
        "rate_offered": rate,
        "seconds": seconds,
        "issued": total,
        "accepted": len(sent),
        "failed_requests": failures,
        "late_starts": late_starts,
        "issue_seconds": round(issued_seconds, 2),
        "pushed_to_browser": len(done),
        "lost": len(sent) - len(done),
        "completed_per_second": round(len(done) / max(last - started, 1e-6), 1),
        "api_call": harness.latency_summary([answered - written for written, answered, _ in sent.values()]),
        "round_trip": harness.latency_summary(round_trips),
        "round_trip_cross_worker": harness.latency_summary(
            [browser.finished_at[pk] - sent[pk][0] for pk in done if sent[pk][2]]
        ),
        "round_trip_same_worker": harness.latency_summary(
            [browser.finished_at[pk] - sent[pk][0] for pk in done if not sent[pk][2]]
        ),
    }


def echo_baseline(args: Any, devices: int) -> dict[str, Any]:
    """Ping/pong round trips against the bare websockets server holding the same connections."""
    log_dir = common.LOG_DIR / f"{args.name}-baseline"
    ports = [args.base_port + 11, args.base_port + 12]
    servers = harness.ServerSet(
        "baseline", ports, cpus=args.server_cpus, env=dict(os.environ), log_dir=log_dir, duration=args.max_seconds
    )
    shards = None
    try:
        shards = harness.Shards(
            args.shards,
            devices=devices,
            ports=ports,
            cpus=args.sim_cpus,
            connect_rate=400,
            heartbeat=args.heartbeat,
            duration=args.max_seconds,
            log_dir=log_dir,
        )
        shards.target(devices, timeout=devices / 20 + 300)
        shards.stats(reset=True)
        time.sleep(args.echo_seconds)
        stats = shards.stats()
        return {"devices": devices, "ping_rtt_by_shard": stats.get("ping_rtt_by_shard")}
    finally:
        if shards is not None:
            shards.stop()
        servers.stop()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rates", default="5,10,20,40,80", help="commands per second, one level each")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per level")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive API connections")
    parser.add_argument("--proxy-devices-max", type=int, default=8000)
    parser.add_argument("--echo-seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=int, default=50, help="commands at 10/s before the first level, not counted")
    parser.add_argument(
        "--settle", type=float, default=30.0, help="seconds connected before the first level (one heartbeat round)"
    )
    parser.add_argument("--no-baseline", action="store_true")
    harness.common_args(parser, name="commands", base_port=8600)
    args = parser.parse_args(argv)
    common.stop_on_sigterm()
    # One device more than the fleet: it probes which worker is which (Fleet.worker_names_by_channel_prefix).
    env, pg, seeded = harness.prepare(args, args.devices + 1)
    env["API_THROTTLE_USER"] = API_THROTTLE
    from devices.models import Device

    with_proxy_devices = args.devices <= args.proxy_devices_max
    results = harness.header("commands", args, argv, "commands.py")
    results.update(
        settings={
            "devices": args.devices,
            "rates": args.rates,
            "seconds_per_level": args.seconds,
            "settle_seconds": args.settle,
            "warmup_commands": args.warmup,
            "api_connections": args.connections,
            "workers": args.workers,
            "proxy": "haproxy (bench/haproxy.cfg), leastconn",
            "devices_connect": "through the proxy" if with_proxy_devices else "directly to the two workers",
            "load_generator_and_browser": f"this process, taskset -c {args.sim_cpus}",
        },
        seeded=seeded,
    )
    tenant_slug = "bench-0"
    api_key, session_key, tenant_id = bench_credentials(tenant_slug)
    if args.sim_cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(cpu) for cpu in args.sim_cpus.split(",")})
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
        proxy=True,
        devices_via_proxy=with_proxy_devices,
        max_pending=args.max_pending,
        app=args.app,
    )
    try:
        results["connect_seconds"] = round(fleet.connect(args.devices), 1)
        # The ramp's own work (20,000 first statuses to write, the goodbyes of attempts that gave
        # up) is done before the first level: it measured the ramp's tail (p95 1.7 s at 5/s), not
        # a connected fleet.
        time.sleep(args.settle)
        # HAProxy names workers worker1/worker2 by port; a channel name starts with its process's id.
        worker_names = fleet.worker_names_by_channel_prefix(pg, probe_device=args.devices)
        live = list(
            Device.objects.filter(is_live=True, tenant_id=tenant_id)
            .exclude(device_id=common.device_uid(args.devices))  # the probe
            .values_list("pk", "connection_channel")
        )
        workers = sorted({channel.split("!", 1)[0] for _, channel in live})
        devices = [(pk, worker_names.get(channel.split("!", 1)[0], "?")) for pk, channel in live]
        results["live_devices"] = len(live)
        results["devices_per_worker"] = harness.workers_of_live_devices(pg)
        common.log(f"commands: {len(live)} devices live on {len(workers)} workers")
        rng = random.Random(11)
        browser = Browser()
        levels: list[dict[str, Any]] = []

        async def run() -> None:
            ready = asyncio.Event()
            browser_task = asyncio.create_task(browser.run(fleet.proxy_port, tenant_slug, session_key, ready))
            await asyncio.wait_for(ready.wait(), timeout=30)
            if args.warmup:
                # Each keep-alive connection's first request, each pool thread's first statement
                # and each worker's first pooled database connections are paid here, not by the
                # first level (a portal that has been running has paid them long ago).
                warmup = await issue_level(
                    port=fleet.proxy_port,
                    tenant_slug=tenant_slug,
                    api_key=api_key,
                    devices=devices,
                    rate=10.0,
                    seconds=args.warmup / 10.0,
                    connections=args.connections,
                    browser=browser,
                    rng=rng,
                )
                results["warmup"] = {key: warmup[key] for key in ("issued", "pushed_to_browser", "round_trip")}
            for rate in [float(value) for value in args.rates.split(",") if value]:
                load_before = common.loadavg()
                cpu = common.CpuWindow(fleet.server_pids)
                level = await issue_level(
                    port=fleet.proxy_port,
                    tenant_slug=tenant_slug,
                    api_key=api_key,
                    devices=devices,
                    rate=rate,
                    seconds=args.seconds,
                    connections=args.connections,
                    browser=browser,
                    rng=rng,
                )
                level["server_cpu_percent"] = cpu.percent()
                # What one command costs the servers (both workers and HAProxy), and so the rate
                # at which they would fill every core of this machine.
                busy_ms = level["server_cpu_percent"] / 100 * (time.monotonic() - cpu.started) * 1000
                level["server_cpu_ms_per_command"] = round(busy_ms / max(1, level["pushed_to_browser"]), 2)
                level["loadavg_before"], level["loadavg_after"] = load_before, common.loadavg()
                levels.append(level)
                common.log(
                    f"commands: {rate:.0f}/s offered -> {level['completed_per_second']}/s completed, "
                    f"round trip {level['round_trip']}, lost {level['lost']}, failed {level['failed_requests']}"
                )
            browser_task.cancel()

        asyncio.run(run())
        results["levels"] = levels
        results["browser_statuses"] = browser.statuses
        assert fleet.shards is not None
        results["simulator"] = {
            key: value
            for key, value in fleet.shards.stats().items()
            if key in ("ready", "commands", "errors", "closes", "ping_rtt_by_shard")
        }
    finally:
        fleet.stop()
        pg.reset_presence()
        pg.close()
    if not args.no_baseline:
        results["baseline_echo"] = echo_baseline(args, args.devices)
    results["targets"] = {"p50_ms": 25, "p99_ms": 100, "commands_per_second": 500}
    results["summary"] = summarise(results)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path = common.write_result(args.name, results, args.results_dir)
    print(json.dumps(results["summary"], indent=2))
    common.log(f"wrote {path}")
    return results


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Best level meeting the latency targets, the highest completed rate, and ratios to the echo."""
    levels = results.get("levels", [])
    meeting = [
        level
        for level in levels
        if level["lost"] == 0
        and not level["failed_requests"]
        and level["round_trip"].get("p50_ms", 1e9) <= 25
        and level["round_trip"].get("p99_ms", 1e9) <= 100
    ]
    echo = [shard.get("p50_ms") for shard in (results.get("baseline_echo", {}).get("ping_rtt_by_shard") or [])]
    echo_p50 = min([value for value in echo if value], default=None)
    at_lowest = levels[0]["round_trip"] if levels else {}
    cost = [level["server_cpu_ms_per_command"] for level in levels if level.get("pushed_to_browser")]
    cost_ms = sorted(cost)[len(cost) // 2] if cost else None
    return {
        "devices": results["settings"]["devices"],
        "server_cpu_ms_per_command": cost_ms,
        "commands_per_second_per_core_at_most": round(1000 / cost_ms, 1) if cost_ms else None,
        "lowest_rate": levels[0]["rate_offered"] if levels else None,
        "round_trip_at_lowest_rate": at_lowest,
        "highest_rate_meeting_latency_targets": max((level["rate_offered"] for level in meeting), default=None),
        "highest_completed_per_second": max((level["completed_per_second"] for level in levels), default=None),
        "echo_p50_ms": echo_p50,
        "ratio_p50_to_echo": round(at_lowest["p50_ms"] / echo_p50, 1) if echo_p50 and at_lowest.get("p50_ms") else None,
        "lost_in_all_levels": sum(level["lost"] for level in levels),
    }


if __name__ == "__main__":
    main()
