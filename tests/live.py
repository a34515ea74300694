"""A real portal for end-to-end tests: uvicorn in a subprocess on a database of its own.

On the embedded default the portal gets a fresh SQLite file; when the suite runs on PostgreSQL it
gets a temporary database on the same server (dropped afterwards), and the suite's Redis when one
is configured. Scripts run "inside" the portal with `LivePortal.django()`: a Python snippet with
Django set up on the portal's database.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

REPO = Path(__file__).resolve().parents[1]

DJANGO_PRELUDE = """
import json, os, sys
sys.path.insert(0, os.getcwd())
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
import django
django.setup()
arguments = json.loads(sys.argv[1])
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], Any], *, timeout: float = 20, what: str = "the condition") -> Any:
    """Return check()'s first truthy value, polling; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@contextmanager
def temporary_database(use_postgres: bool) -> Iterator[str | None]:
    """Yield the URL of a fresh PostgreSQL database on the suite's server, or None for SQLite."""
    if not (use_postgres and settings.DATABASE_URL):
        yield None
        return
    import psycopg

    server = settings.DATABASE_URL.rsplit("/", 1)[0]
    name = f"portal_live_{secrets.token_hex(4)}"
    with psycopg.connect(server + "/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(server + "/postgres", autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class LivePortal:
    root: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    server: subprocess.Popen | None = None
    # What the seed script printed (JSON).
    seeded: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def sqlite_path(self) -> Path:
        return Path(self.env["PORTAL_DATA_DIR"]) / "portal.sqlite3"

    def django(self, script: str, **arguments: Any) -> Any:
        """Run a snippet with Django set up on this portal's database; return the JSON it printed last."""
        done = subprocess.run(
            [sys.executable, "-c", DJANGO_PRELUDE + script, json.dumps(arguments)],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()
        return json.loads(lines[-1]) if lines else None

    def start(self) -> None:
        with open(self.log_path, "a") as log:
            self.server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "portal.asgi:application",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--ws",
                    "websockets-sansio",
                    "--ws-per-message-deflate",
                    "false",
                    "--no-access-log",
                    # An open browser websocket (live updates) would otherwise hold the shutdown.
                    "--timeout-graceful-shutdown",
                    "5",
                ],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/login/", timeout=1)  # noqa: S310 - our own server
                return
            except OSError:
                if time.monotonic() > deadline or self.server.poll() is not None:
                    raise RuntimeError(self.log_path.read_text()) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
                raise


@contextmanager
def live_portal(
    root: Path,
    *,
    use_postgres: bool = True,
    redis_url: str | None = None,
    extra_env: dict[str, str] | None = None,
    seed: str = "",
    seed_arguments: dict[str, Any] | None = None,
    portal_class: type[LivePortal] = LivePortal,
) -> Iterator[LivePortal]:
    """Migrate a fresh database, run `seed` in it, start uvicorn and yield; stop and clean up after."""
    root.mkdir(parents=True, exist_ok=True)
    with temporary_database(use_postgres) as database_url:
        env = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL"}}
        env.update(PORTAL_DATA_DIR=str(root / "data"), DEBUG="0", PYTHONUNBUFFERED="1", **(extra_env or {}))
        if database_url:
            env["DATABASE_URL"] = database_url
        redis_url = redis_url if redis_url is not None else (settings.REDIS_URL if use_postgres else "")
        if redis_url:
            env["REDIS_URL"] = redis_url
        portal = portal_class(root=root, env=env)
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO, env=env, check=True, timeout=180)
        if seed:
            portal.seeded = portal.django(seed, **(seed_arguments or {}))
        portal.start()
        try:
            yield portal
        finally:
            portal.stop()
