"""Shared helpers of the fleet benchmarks: device tokens, the bench database, server processes and
/proc sampling. Standard library only at import time, so the simulator can import it without Django.

Every bench runs as a script (`python bench/<name>.py`); this module puts the repository root on
sys.path so that the project's packages import as usual.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
RESULTS_DIR = BENCH_DIR / "results"
# Server and simulator logs: outside the repository, they are only for looking into a failed run.
LOG_DIR = Path(os.environ.get("BENCH_LOG_DIR", "") or Path(tempfile.gettempdir()) / "portal-bench-logs")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The secret from which every seeded device's token is derived. Not a credential: the bench
# database is throw-away, and the simulator must recompute each token from the device index.
DEFAULT_SECRET = os.environ.get("BENCH_SECRET", "bench-fleet-secret")
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/portal_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


# --- Devices --------------------------------------------------------------------------------


def device_token(index: int, secret: str = DEFAULT_SECRET) -> str:
    """Return device `index`'s token: 43 URL-safe characters, like a real one (256 bits)."""
    digest = hmac.new(secret.encode(), f"device:{index}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def token_hash(token: str) -> str:
    """The stored form of a token: the same function as devices.services.token_hash."""
    return hashlib.sha256(token.encode()).hexdigest()


def device_uid(index: int) -> str:
    """The client-generated device id of device `index`."""
    return f"bench-{index:07d}"


def devices_of_shard(count: int, shard: int, shards: int, first: int = 0) -> range:
    return range(first + shard, first + count, shards)


# --- Processes and /proc --------------------------------------------------------------------


def loadavg() -> list[float]:
    with open("/proc/loadavg") as handle:
        return [float(value) for value in handle.read().split()[:3]]


def proc_cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    # After the command name: state is field 3, utime 14 and stime 15 (1-based over the whole line).
    return int(fields[11]) + int(fields[12])


def proc_rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * PAGE_KIB
    except OSError:
        return 0


def proc_children(pid: int) -> list[int]:
    """All descendants of a process (for servers that fork workers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in parents.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def proc_tree(pids: list[int]) -> list[int]:
    tree = []
    for pid in pids:
        tree.append(pid)
        tree.extend(proc_children(pid))
    return tree


def proc_open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class CpuWindow:
    """CPU % of a set of processes over a window (100% = one core busy)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.started = time.monotonic()
        self.ticks = sum(proc_cpu_ticks(pid) for pid in pids)

    def percent(self) -> float:
        elapsed = time.monotonic() - self.started
        ticks = sum(proc_cpu_ticks(pid) for pid in self.pids) - self.ticks
        return round(100.0 * ticks / CLK_TCK / max(elapsed, 1e-6), 1)


def pinned(command: list[str], cpus: str | None) -> list[str]:
    """Prefix a command with taskset when a CPU list is given and taskset exists."""
    if cpus and shutil.which("taskset"):
        return ["taskset", "-c", cpus, *command]
    return command


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 60.0, process: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server on port {port} exited with {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def stop_process(process: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM one process we started (and its own process group), then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            process.kill()
        process.wait(5)


def python() -> str:
    return sys.executable


# --- Environment, database, results ---------------------------------------------------------


def server_env(
    *, database_url: str | None, redis_url: str | None, heartbeat: int = 30, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of a production-like server: PostgreSQL, Redis, DEBUG off."""
    env = dict(os.environ)
    for name in ("DATABASE_URL", "REDIS_URL"):
        env.pop(name, None)
    if database_url:
        env["DATABASE_URL"] = database_url
    if redis_url:
        env["REDIS_URL"] = redis_url
    env["DEBUG"] = "0"
    env["DEVICE_HEARTBEAT_INTERVAL"] = str(heartbeat)
    env["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    env["LOG_LEVEL"] = env.get("BENCH_LOG_LEVEL", "WARNING")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def apply_env(database_url: str | None, redis_url: str | None, heartbeat: int = 30) -> None:
    """Set this process's environment (before Django is set up) as the servers get it."""
    for name, value in (("DATABASE_URL", database_url), ("REDIS_URL", redis_url)):
        if value:
            os.environ[name] = value
        else:
            os.environ.pop(name, None)
    os.environ.update(
        {"DEBUG": "0", "DEVICE_HEARTBEAT_INTERVAL": str(heartbeat), "DJANGO_SETTINGS_MODULE": "portal.settings"}
    )


def django_setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()


def pg_admin_url(database_url: str) -> tuple[str, str]:
    """Return (URL of the server's `postgres` database, name of the bench database)."""
    parts = urlsplit(database_url)
    return urlunsplit(parts._replace(path="/postgres")), parts.path.lstrip("/")


def ensure_database(database_url: str | None, *, recreate: bool = False) -> None:
    """Create the bench database if it is missing (PostgreSQL only) and apply the migrations."""
    if database_url and database_url.startswith(("postgres://", "postgresql://")):
        import psycopg

        admin_url, name = pg_admin_url(database_url)
        with psycopg.connect(admin_url, autocommit=True) as connection:
            exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if exists and recreate:
                connection.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
                connection.execute(f'DROP DATABASE "{name}"')
                exists = None
            if not exists:
                connection.execute(f'CREATE DATABASE "{name}"')
    env = server_env(database_url=database_url, redis_url=None)
    if not database_url:
        env.pop("DATABASE_URL", None)
    subprocess.run([python(), str(ROOT / "manage.py"), "migrate", "-v0"], env=env, cwd=ROOT, check=True)


def drop_database(database_url: str) -> None:
    import psycopg

    admin_url, name = pg_admin_url(database_url)
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')


def redis_flush(redis_url: str | None) -> None:
    """Empty the bench's own Redis database (the number in REDIS_URL), never another."""
    if not redis_url:
        return
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()


def machine_info(database_url: str | None = None, redis_url: str | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "open_files_limit": _open_files_limit(),
    }
    try:
        with open("/proc/meminfo") as handle:
            info["memory_gib"] = round(int(handle.readline().split()[1]) / 1024 / 1024, 1)
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if database_url and database_url.startswith(("postgres://", "postgresql://")):
        try:
            import psycopg

            with psycopg.connect(database_url) as connection:
                info["postgresql"] = connection.execute("SHOW server_version").fetchone()[0]
        except Exception as error:  # noqa: BLE001 - informative only
            info["postgresql"] = f"unavailable: {error}"
    if redis_url:
        try:
            import redis

            client = redis.Redis.from_url(redis_url)
            info["redis"] = client.info("server")["redis_version"]
            client.close()
        except Exception as error:  # noqa: BLE001 - informative only
            info["redis"] = f"unavailable: {error}"
    try:
        import websockets

        info["websockets"] = websockets.__version__
    except ImportError:
        pass
    try:
        import uvicorn

        info["uvicorn"] = uvicorn.__version__
    except ImportError:
        pass
    return info


def code_version() -> dict[str, Any]:
    """The commit measured, whether the working tree differed from it, and the database settings."""
    version: dict[str, Any] = {}
    try:
        version["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")
        version["uncommitted_changes"] = sorted(line[3:] for line in changed if line.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from django.conf import settings

        database = settings.DATABASES["default"]
        version["database_settings"] = {
            key: database.get(key) for key in ("ENGINE", "CONN_MAX_AGE", "CONN_HEALTH_CHECKS", "OPTIONS")
        }
    except Exception:  # noqa: BLE001 - Django may not be set up
        pass
    return version


def _open_files_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_open_files_limit() -> int:
    """Raise the soft open-file limit to the hard one; return the limit in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def write_result(name: str, data: dict[str, Any], results_dir: str | Path | None = None) -> Path:
    directory = Path(results_dir) if results_dir else RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    return path


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(values: list[float]) -> dict[str, Any]:
    """p50/p95/p99/max of durations given in seconds, in milliseconds."""
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "p50_ms": round(percentile(values, 0.50) * 1000, 2),
        "p95_ms": round(percentile(values, 0.95) * 1000, 2),
        "p99_ms": round(percentile(values, 0.99) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
    }


def stop_on_sigterm() -> None:
    """Turn SIGTERM (and SIGINT, which a background shell ignores) into SystemExit, so that every
    `finally` runs and the processes a bench started are stopped with it."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
