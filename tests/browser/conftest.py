"""A real portal for the browser tests: uvicorn in a subprocess, on its own database, driven by Debian's
Chromium through Playwright. Nothing is downloaded at test time."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import CHROMIUM

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class LivePortal:
    url: str
    password: str
    seeded: dict


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _database_env(tmp_path: Path) -> tuple[dict[str, str], callable]:
    """Give the server a database of its own: a temporary PostgreSQL database, or a SQLite file."""
    if not settings.DATABASE_URL:
        return {}, lambda: None
    import psycopg

    name = f"portal_browser_{secrets.token_hex(4)}"
    admin_url = settings.DATABASE_URL.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return {"DATABASE_URL": settings.DATABASE_URL.rsplit("/", 1)[0] + "/" + name}, drop


@pytest.fixture
def live_portal(tmp_path: Path) -> Iterator[LivePortal]:
    database_env, drop_database = _database_env(tmp_path)
    env = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(database_env, PORTAL_DATA_DIR=str(tmp_path / "data"), DEBUG="0", PYTHONUNBUFFERED="1")
    if settings.REDIS_URL:
        env["REDIS_URL"] = settings.REDIS_URL
    password = secrets.token_urlsafe(12)
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO, env=env, check=True)
        seeded = subprocess.run(
            [sys.executable, "tests/browser/seed_world.py", password],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        port = _free_port()
        log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "portal.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--ws",
                "websockets-sansio",
                "--ws-per-message-deflate",
                "false",
                "--no-access-log",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/login/", timeout=1)  # noqa: S310 - our own server
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError((tmp_path / "server.log").read_text()) from None
                time.sleep(0.2)
        try:
            yield LivePortal(url=url, password=password, seeded=json.loads(seeded.stdout.strip().splitlines()[-1]))
        finally:
            server.terminate()
            server.wait(timeout=10)
            log.close()
    finally:
        drop_database()


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
