"""A tiny run of bench/usage_report.py: the script seeds, builds, stores, receives and writes sane JSON.

No timing is asserted. With DATABASE_URL set (PostgreSQL) it runs in a database of its own on that
server (`<name>_usage_report_smoke`, dropped afterwards); otherwise on SQLite in a temporary folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def bench_run(tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL")}
    env.update(PORTAL_DATA_DIR=str(tmp_path / "data"), BENCH_LOG_DIR=str(tmp_path / "logs"), PYTHONPATH=str(ROOT))
    env.pop("DJANGO_SETTINGS_MODULE", None)
    database_url = os.environ.get("DATABASE_URL", "")
    smoke_database = None
    if database_url.startswith(("postgres://", "postgresql://")):
        parts = urlsplit(database_url)
        smoke_database = urlunsplit(parts._replace(path="/" + parts.path.lstrip("/") + "_usage_report_smoke"))
        args = ["--database-url", smoke_database]
    else:
        args = ["--embedded"]
    yield env, args
    if smoke_database:
        sys.path.insert(0, str(BENCH))
        try:
            import common

            common.drop_database(smoke_database)
        finally:
            sys.path.remove(str(BENCH))


def test_it_builds_stores_and_receives_a_tiny_report(bench_run, tmp_path):
    env, args = bench_run
    completed = subprocess.run(
        [
            sys.executable,
            str(BENCH / "usage_report.py"),
            *args,
            "--devices",
            "60",
            "--tenants",
            "3",
            "--runs",
            "2",
            "--results-dir",
            str(tmp_path),
            "--name",
            "usage",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-6000:]
    assert "build: median" in completed.stdout

    result = json.loads((tmp_path / "usage.json").read_text())
    build = result["build"]
    assert result["scenario"] == "usage_report" and len(build["runs"]) == 2
    assert build["devices_in_report"] == 60 and build["tenants_in_report"] == 3
    assert build["json_bytes"] > build["gzip_bytes"] > 0 and build["queries"] > 0
    assert build["python_peak_mib"] >= 0 and build["median_seconds"] > 0
    assert result["receive"]["devices"] == 60 and result["tenant_part"]["bytes"] > 0
