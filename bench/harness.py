"""Process plumbing shared by the scenarios: server processes (the portal under uvicorn, or the bare
baseline) pinned to one core, simulator shards pinned to another and driven over stdin, and
PostgreSQL counters. Every process started here is stopped by its own id."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import common

DEFAULT_APP = "portal.asgi:application"
UVICORN_ARGS = [
    "--ws",
    "websockets-sansio",
    "--ws-per-message-deflate",
    "false",
    "--lifespan",
    "off",
    # As docs/deployment.md recommends: a restart closes the websockets and does not wait for
    # thousands of goodbyes (a database write each).
    "--timeout-graceful-shutdown",
    "5",
    "--no-access-log",
    "--log-level",
    "warning",
]


# As docs/deployment.md recommends: long enough that a reconnect storm's surplus reaches the worker,
# which turns it away at once with a time to come back, rather than being dropped by the kernel.
DEFAULT_BACKLOG = 1024


class ServerSet:
    """One server process per port, all pinned to `cpus`."""

    def __init__(
        self,
        kind: str,
        ports: list[int],
        *,
        cpus: str | None,
        env: dict[str, str],
        log_dir: Path,
        duration: float = 3600,
        extra_args: list[str] | None = None,
        app: str = DEFAULT_APP,
        backlog: int = DEFAULT_BACKLOG,
    ) -> None:
        self.kind, self.ports = kind, ports
        self.processes: list[subprocess.Popen[bytes]] = []
        log_dir.mkdir(parents=True, exist_ok=True)
        self.logs = []
        for port in ports:
            if kind == "portal":
                command = [
                    common.python(),
                    "-m",
                    "uvicorn",
                    app,
                    *(["--app-dir", str(common.BENCH_DIR)] if app != DEFAULT_APP else []),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    *UVICORN_ARGS,
                    "--backlog",
                    str(backlog),
                    *(extra_args or []),
                ]
            elif kind == "baseline":
                command = [
                    common.python(),
                    str(common.BENCH_DIR / "baseline_server.py"),
                    "--port",
                    str(port),
                    "--duration",
                    str(duration),
                ]
            else:
                raise ValueError(kind)
            log = open(log_dir / f"{kind}-{port}.log", "wb")  # noqa: SIM115 - closed in stop()
            self.logs.append(log)
            self.processes.append(
                subprocess.Popen(
                    common.pinned(command, cpus),
                    env=env,
                    cwd=common.ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        for port, process in zip(ports, self.processes, strict=True):
            common.wait_port(port, timeout=90, process=process)

    @property
    def pids(self) -> list[int]:
        return common.proc_tree([process.pid for process in self.processes])

    def rss_kib(self) -> int:
        return sum(common.proc_rss_kib(pid) for pid in self.pids)

    def alive(self) -> bool:
        return all(process.poll() is None for process in self.processes)

    def stop(self) -> None:
        """Stop every server at once (SIGTERM to all, then wait), as a restart of all workers does."""
        threads = [threading.Thread(target=common.stop_process, args=(process,)) for process in self.processes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for log in self.logs:
            log.close()


class Shards:
    """Simulator processes driven over stdin; their JSON-line events are collected by threads."""

    def __init__(
        self,
        count: int,
        *,
        devices: int,
        ports: list[int],
        cpus: str | None,
        connect_rate: float,
        heartbeat: float,
        duration: float,
        log_dir: Path,
        first: int = 0,
        max_pending: int = 100,
        extra_args: list[str] | None = None,
    ) -> None:
        self.count = count
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.threads: list[threading.Thread] = []
        self.stderr_logs = []
        log_dir.mkdir(parents=True, exist_ok=True)
        for shard in range(count):
            command = [
                common.python(),
                str(common.BENCH_DIR / "simulator.py"),
                "--control",
                "--devices",
                str(devices),
                "--first",
                str(first),
                "--shard",
                f"{shard}/{count}",
                "--ports",
                ",".join(str(port) for port in ports),
                "--connect-rate",
                str(connect_rate / count),
                "--heartbeat",
                str(heartbeat),
                "--duration",
                str(duration),
                "--max-pending",
                str(max(1, max_pending // count)),
                "--report-every",
                "15",
                *(extra_args or []),
            ]
            stderr = open(log_dir / f"simulator-{shard}.log", "wb")  # noqa: SIM115 - closed in stop()
            self.stderr_logs.append(stderr)
            process = subprocess.Popen(
                common.pinned(command, cpus),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=common.BENCH_DIR,
                env={**os.environ, "PYTHONPATH": str(common.ROOT)},
                start_new_session=True,
            )
            self.processes.append(process)
            thread = threading.Thread(target=self._read, args=(process,), daemon=True)
            thread.start()
            self.threads.append(thread)
        self.wait("started", timeout=60)

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                continue

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def send(self, line: str, shard: int | None = None) -> None:
        for index, process in enumerate(self.processes):
            if shard is not None and index != shard:
                continue
            if process.poll() is None and process.stdin is not None:
                process.stdin.write((line + "\n").encode())
                process.stdin.flush()

    def share(self, total: int, shard: int) -> int:
        """How many of `total` devices (counted from the first) belong to `shard`."""
        return max(0, (total - shard + self.count - 1) // self.count)

    def wait(self, event: str, timeout: float, count: int | None = None) -> list[dict[str, Any]]:
        """Wait for `event` from every shard (or `count` events); return them in arrival order."""
        wanted = self.count if count is None else count
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(found) < wanted:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"waited {timeout} s for {event!r}; got {len(found)} of {wanted}")
            try:
                item = self.events.get(timeout=min(left, 1.0))
            except queue.Empty:
                if not any(process.poll() is None for process in self.processes):
                    raise RuntimeError("every simulator shard has exited") from None
                continue
            if item.get("event") == event:
                found.append(item)
        return found

    def target(self, total: int, timeout: float) -> list[dict[str, Any]]:
        for shard in range(self.count):
            self.send(f"target {self.share(total, shard)}", shard)
        return self.wait("reached", timeout)

    def stats(self, reset: bool = False) -> dict[str, Any]:
        self.send("stats reset" if reset else "stats")
        return merge_stats(self.wait("stats", timeout=30))

    def stop(self) -> list[dict[str, Any]]:
        self.send("stop")
        summaries: list[dict[str, Any]] = []
        with contextlib.suppress(TimeoutError, RuntimeError):
            summaries = self.wait("summary", timeout=40)
        for process in self.processes:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            common.stop_process(process)
        for log in self.stderr_logs:
            log.close()
        return summaries


def merge_stats(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Add the shards' counters; keep each shard's latency summaries side by side."""
    merged: dict[str, Any] = {"shards": len(items)}
    for item in items:
        for key, value in item.items():
            if key in ("event", "t", "shard"):
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                merged[key] = merged.get(key, 0) + value
            elif isinstance(value, dict) and key not in (
                "ping_rtt",
                "handshake",
                "connect_to_welcome",
                "command_push_latency",
            ):
                bucket = merged.setdefault(key, {})
                for name, count in value.items():
                    if isinstance(count, int | float):
                        bucket[name] = bucket.get(name, 0) + count
            else:
                merged.setdefault(key + "_by_shard", []).append(value)
    return merged


def counter_delta(after: dict[str, Any], before: dict[str, Any], key: str, name: str) -> int:
    return int(after.get(key, {}).get(name, 0)) - int(before.get(key, {}).get(name, 0))


def worst(summaries: list[dict[str, Any]], field: str) -> float | None:
    values = [summary.get(field) for summary in summaries if summary.get(field) is not None]
    return max(values) if values else None


# --- PostgreSQL counters ------------------------------------------------------------------------


class PgCounters:
    def __init__(self, database_url: str | None) -> None:
        self.url = database_url if database_url and database_url.startswith(("postgres://", "postgresql://")) else None
        self.connection = None
        if self.url:
            import psycopg

            self.connection = psycopg.connect(self.url, autocommit=True)

    def snapshot(self) -> dict[str, int]:
        if self.connection is None:
            return {}
        row = self.connection.execute(
            "SELECT n_tup_upd, n_tup_hot_upd, n_tup_ins FROM pg_stat_user_tables WHERE relname = 'devices_device'"
        ).fetchone()
        database = self.connection.execute(
            "SELECT xact_commit, tup_updated, tup_inserted, tup_deleted, sessions FROM pg_stat_database "
            "WHERE datname = current_database()"
        ).fetchone()
        return {
            "device_rows_updated": row[0],
            "device_rows_hot_updated": row[1],
            "db_commits": database[0],
            "db_rows_updated": database[1],
            "db_rows_inserted": database[2],
            "db_rows_deleted": database[3],
            "db_sessions_opened": database[4],
        }

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        if self.connection is None:
            return []
        return self.connection.execute(sql, params).fetchall()

    def live_devices(self) -> int | None:
        if self.connection is None:
            return None
        return self.connection.execute("SELECT count(*) FROM devices_device WHERE is_live").fetchone()[0]

    def reset_presence(self) -> None:
        if self.connection is not None:
            self.connection.execute(
                "UPDATE devices_device SET is_live = false, connection_channel = '' "
                "WHERE is_live OR connection_channel <> ''"
            )

    def vacuum(self) -> None:
        """VACUUM ANALYZE the bench database: start each run from what autovacuum keeps.

        Every connect, disconnect and heartbeat rewrites a device row. On a server with autovacuum
        off (this machine's, 2026-12-02) the dead rows of earlier runs piled up (276,000 beside
        100,000 live devices) and each run measured a slower database than the one before: the
        same code cost 36 ms of server CPU a command at 22:10 and 48 ms at 23:08.
        """
        if self.connection is not None:
            self.connection.execute("VACUUM ANALYZE")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before.get(key, 0) for key in after}


def wait_stats_flushed(seconds: float = 1.5) -> None:
    """PostgreSQL backends publish table counters at most once a second: let them."""
    time.sleep(seconds)


# --- A proxy in front of the workers, and a whole fleet ------------------------------------------


class Proxy:
    """HAProxy (Debian's package) with bench/haproxy.cfg, in front of two worker ports."""

    def __init__(self, port: int, workers: list[int], *, cpus: str | None, log_dir: Path) -> None:
        import shutil

        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not os.path.exists(binary):
            raise RuntimeError("haproxy is not installed (Debian: apt-get install haproxy)")
        if len(workers) != 2:
            raise ValueError("bench/haproxy.cfg names two workers")
        env = {
            **os.environ,
            "BENCH_PROXY_PORT": str(port),
            "BENCH_WORKER1_PORT": str(workers[0]),
            "BENCH_WORKER2_PORT": str(workers[1]),
        }
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(log_dir / "haproxy.log", "wb")  # noqa: SIM115 - closed in stop()
        self.port = port
        self.process = subprocess.Popen(
            common.pinned([binary, "-db", "-f", str(common.BENCH_DIR / "haproxy.cfg")], cpus),
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        common.wait_port(port, timeout=30, process=self.process)

    @property
    def pids(self) -> list[int]:
        return common.proc_tree([self.process.pid])

    def stop(self) -> None:
        common.stop_process(self.process)
        self.log.close()


class Fleet:
    """Portal workers (optionally behind HAProxy) and simulator shards holding `devices` devices."""

    def __init__(
        self,
        *,
        name: str,
        devices: int,
        workers: int,
        base_port: int,
        env: dict[str, str],
        server_cpus: str | None,
        sim_cpus: str | None,
        shards: int,
        heartbeat: float,
        duration: float,
        proxy: bool = False,
        devices_via_proxy: bool = True,
        max_pending: int = 100,
        connect_rate: float = 400,
        app: str = DEFAULT_APP,
        backlog: int = DEFAULT_BACKLOG,
    ) -> None:
        self.log_dir = common.LOG_DIR / name
        self.app = app
        self.worker_ports = [base_port + 1 + offset for offset in range(workers)]
        self.servers = ServerSet(
            "portal", self.worker_ports, cpus=server_cpus, env=env, log_dir=self.log_dir, app=app, backlog=backlog
        )
        self.proxy: Proxy | None = None
        self.shards: Shards | None = None
        try:
            if proxy:
                self.proxy = Proxy(base_port, self.worker_ports, cpus=server_cpus, log_dir=self.log_dir)
            self.shards = Shards(
                shards,
                devices=devices,
                ports=[base_port] if proxy and devices_via_proxy else self.worker_ports,
                cpus=sim_cpus,
                connect_rate=connect_rate,
                heartbeat=heartbeat,
                duration=duration,
                log_dir=self.log_dir,
                max_pending=max_pending,
            )
        except BaseException:
            self.stop()
            raise

    @property
    def server_pids(self) -> list[int]:
        return self.servers.pids + (self.proxy.pids if self.proxy else [])

    @property
    def proxy_port(self) -> int:
        assert self.proxy is not None
        return self.proxy.port

    def worker_names_by_channel_prefix(self, pg: PgCounters, probe_device: int | None = None) -> dict[str, str]:
        """Map each worker's channel-name prefix to HAProxy's name for it (worker1, worker2, ...).

        One seeded device beyond the fleet (`probe_device`, by default the last seeded one)
        connects straight to each worker's port in turn; its connection channel names the process.
        """
        import asyncio

        from websockets.asyncio.client import connect

        index = probe_device if probe_device is not None else pg.query("SELECT count(*) FROM devices_device")[0][0] - 1
        token = common.device_token(index)
        names: dict[str, str] = {}

        async def probe(port: int) -> str:
            url = f"ws://127.0.0.1:{port}/ws/device/"
            async with connect(url, additional_headers={"Authorization": f"Device {token}"}) as socket:
                await socket.send(json.dumps({"v": 1, "type": "hello", "name": "probe"}))
                await asyncio.wait_for(socket.recv(), timeout=30)  # the welcome: the row is written
                rows = pg.query(
                    "SELECT connection_channel FROM devices_device WHERE device_id = %s", [common.device_uid(index)]
                )
                return rows[0][0].split("!", 1)[0] if rows and rows[0][0] else ""

        for number, port in enumerate(self.worker_ports, start=1):
            prefix = asyncio.run(probe(port))
            if prefix:
                names[prefix] = f"worker{number}"
        return names

    def connect(self, devices: int) -> float:
        assert self.shards is not None
        started = time.monotonic()
        self.shards.target(devices, timeout=devices / 20 + 300)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.shards is not None:
            self.shards.stop()
        if self.proxy is not None:
            self.proxy.stop()
        self.servers.stop()


def workers_of_live_devices(pg: PgCounters) -> dict[str, int]:
    """How many live devices each worker process holds (a channel name starts with its process's id)."""
    rows = pg.query(
        "SELECT split_part(connection_channel, '!', 1), count(*) FROM devices_device WHERE is_live GROUP BY 1"
    )
    return {prefix: count for prefix, count in rows}


def common_args(parser: Any, *, name: str, base_port: int, workers: int = 2) -> None:
    """The options every fleet scenario takes."""
    parser.add_argument("--workers", type=int, default=workers, help="portal worker processes")
    parser.add_argument("--shards", type=int, default=1, help="simulator processes")
    parser.add_argument("--heartbeat", type=int, default=30)
    parser.add_argument("--max-pending", type=int, default=100, help="handshakes in flight while connecting")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--sim-cpus", default="1")
    parser.add_argument("--base-port", type=int, default=base_port)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", common.DEFAULT_DATABASE_URL))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", common.DEFAULT_REDIS_URL))
    parser.add_argument("--embedded", action="store_true", help="no PostgreSQL/Redis: SQLite and the in-memory layer")
    parser.add_argument("--max-seconds", type=float, default=2400.0, help="every process stops by itself after this")
    parser.add_argument("--results-dir", default=None)
    parser.add_argument("--name", default=name)
    parser.add_argument("--app", default=DEFAULT_APP, help="ASGI app (e.g. tuned_asgi:application, from bench/)")


def prepare(args: Any, devices: int) -> tuple[dict[str, str], PgCounters, dict[str, Any] | None]:
    """Environment, database, seeded fleet, clean presence and Redis; Django set up in this process."""
    if args.embedded:
        args.database_url = args.redis_url = None
    common.apply_env(args.database_url, args.redis_url, args.heartbeat)
    common.ensure_database(args.database_url)
    common.django_setup()
    import seed

    seeded = seed.ensure_fleet(devices=devices)
    pg = PgCounters(args.database_url)
    pg.reset_presence()
    pg.vacuum()
    common.redis_flush(args.redis_url)
    env = common.server_env(database_url=args.database_url, redis_url=args.redis_url, heartbeat=args.heartbeat)
    return env, pg, seeded


def header(scenario: str, args: Any, argv: list[str] | None, script: str) -> dict[str, Any]:
    import sys

    return {
        "code": common.code_version(),
        "scenario": scenario,
        "command": "python bench/" + " ".join([script, *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": common.machine_info(args.database_url, args.redis_url),
        "pinning": {
            "servers": f"taskset -c {args.server_cpus}",
            "simulators": f"taskset -c {args.sim_cpus}",
            "postgresql_and_redis": "not pinned",
        },
        "database": "postgresql" if args.database_url else "sqlite (embedded)",
        "channel_layer": "channels-redis" if args.redis_url else "in-memory",
    }


def latency_summary(values: list[float]) -> dict[str, Any]:
    return common.summary_ms([value for value in values if value is not None])


class OwnRedis:
    """A Redis server of the bench's own, on its own port, that a scenario may kill and restart
    without touching the machine's shared Redis (Debian's redis-server binary, nothing on disk)."""

    def __init__(self, port: int, *, log_dir: Path) -> None:
        import shutil

        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(self.binary):
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.port, self.log_dir = port, log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        command += ["--maxclients", "10000", "--logfile", str(self.log_dir / f"redis-{self.port}.log")]
        # Something else listening there (a Redis of an earlier run, still shutting down) would pass
        # the port check below while ours exits at once: the bench would measure no Redis at all.
        if common.port_open(self.port):
            raise RuntimeError(f"port {self.port} is taken: choose another with --own-redis-port")
        self.process = subprocess.Popen(command, cwd=self.log_dir, start_new_session=True)
        common.wait_port(self.port, timeout=30, process=self.process)

    def stop(self) -> None:
        if self.process is not None:
            common.stop_process(self.process)
            self.process = None

    def clients_of(self, pids: list[int]) -> int | None:
        """Connections to this Redis held by these processes (from `ss`), None without `ss`."""
        try:
            listing = subprocess.run(
                ["ss", "-tnpH", "state", "established", f"( dport = :{self.port} )"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        wanted = {f"pid={pid}," for pid in pids}
        return sum(1 for line in listing.splitlines() if any(pid in line for pid in wanted))

    def connected_clients(self) -> int:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            return int(client.info("clients")["connected_clients"]) - 1  # less this very one
        finally:
            client.close()
