"""A tiny run of every bench scenario: the scripts start, drive real processes and write sane JSON.

No timing is asserted here. With DATABASE_URL set (PostgreSQL) the benches get a database of their
own on that server (`<name>_bench_smoke`, dropped afterwards); with REDIS_URL set they use database
number 14 of that Redis (emptied by the benches). Without either they run on the embedded default:
SQLite in a temporary folder and the in-memory channel layer, one server process per scenario.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
SMOKE_REDIS_DB = 14

pytestmark = pytest.mark.timeout(240)


def _free_base_port() -> int:
    """A port p such that p, p+1, p+100 and p+101 are free (servers and baselines use them)."""
    for _ in range(50):
        base = random.randrange(20000, 30000)
        try:
            for port in (base, base + 1, base + 100, base + 101):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free ports")


@pytest.fixture(scope="module")
def bench_env(tmp_path_factory):
    """(environment, extra arguments) for the bench scripts, and clean-up afterwards."""
    data_dir = tmp_path_factory.mktemp("bench-data")
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL")}
    env.update(PORTAL_DATA_DIR=str(data_dir), BENCH_LOG_DIR=str(data_dir / "logs"), PYTHONPATH=str(ROOT))
    env.pop("DJANGO_SETTINGS_MODULE", None)
    args: list[str] = []
    database_url = os.environ.get("DATABASE_URL", "")
    redis_url = os.environ.get("REDIS_URL", "")
    smoke_database = None
    if database_url.startswith(("postgres://", "postgresql://")):
        parts = urlsplit(database_url)
        smoke_database = urlunsplit(parts._replace(path="/" + parts.path.lstrip("/") + "_bench_smoke"))
        args += ["--database-url", smoke_database]
        if redis_url:
            redis_parts = urlsplit(redis_url)
            args += ["--redis-url", urlunsplit(redis_parts._replace(path=f"/{SMOKE_REDIS_DB}"))]
        else:
            args += ["--redis-url", ""]
    else:
        args += ["--embedded"]
    yield env, args, smoke_database
    if smoke_database:
        sys.path.insert(0, str(BENCH))
        try:
            import common

            common.drop_database(smoke_database)
        finally:
            sys.path.remove(str(BENCH))


def run_bench(script: str, arguments: list[str], env: dict[str, str], timeout: float = 200) -> str:
    completed = subprocess.run(
        [sys.executable, str(BENCH / script), *arguments],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, f"{script} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}"
    return completed.stdout


def read_result(directory: Path, name: str) -> dict:
    path = directory / f"{name}.json"
    assert path.exists(), f"{path.name} was not written"
    return json.loads(path.read_text())


def test_capacity_and_baseline_hold_every_device(bench_env, tmp_path):
    env, args, _ = bench_env
    run_bench(
        "capacity.py",
        [
            *args,
            "--steps",
            "20",
            "--hold",
            "2",
            "--warmup",
            "1",
            "--idle-window",
            "1",
            "--servers",
            "1",
            "--shards",
            "1",
            "--base-port",
            str(_free_base_port()),
            "--results-dir",
            str(tmp_path),
            "--name",
            "cap",
        ],
        env,
    )
    result = read_result(tmp_path, "cap")
    assert result["scenario"] == "capacity"
    for kind in ("portal", "baseline"):
        step = result[kind]["steps"][0]
        assert step["connected"] == 20, (kind, step)
        assert step["rss_kib"] > 0 and step["cpu_percent"] >= 0
    assert result["comparison"][0]["devices"] == 20
    assert "memory_ratio" in result["comparison"][0]


def test_ingest_accepts_and_persists(bench_env, tmp_path):
    env, args, _ = bench_env
    run_bench(
        "ingest.py",
        [
            *args,
            "--devices",
            "20",
            "--rates",
            "5",
            "--seconds",
            "3",
            "--pause",
            "0",
            "--raw-rows",
            "2000",
            "--base-port",
            str(_free_base_port()),
            "--results-dir",
            str(tmp_path),
            "--name",
            "ing",
        ],
        env,
    )
    result = read_result(tmp_path, "ing")
    level = result["levels"][0]
    assert level["messages_sent"] > 0 and level["accepted_per_second"] > 0
    assert level["not_drained"] == 0
    assert level["persisted"]["devices_persisted"] == 20, level["persisted"]


def test_pages_measures_each_case(bench_env, tmp_path):
    env, args, _ = bench_env
    run_bench(
        "pages.py",
        [*args, "--devices", "300", "--requests", "3", "--warmup", "1", "--results-dir", str(tmp_path), "--name", "pg"],
        env,
    )
    result = read_result(tmp_path, "pg")
    assert result["cases"], result
    for row in result["cases"]:
        assert row["requests"] == 3 and row["queries"] > 0 and row["median_ms"] > 0, row


def test_seed_writes_known_tokens(bench_env, tmp_path):
    env, args, smoke_database = bench_env
    seed_env = dict(env)
    if smoke_database:
        seed_env["DATABASE_URL"] = smoke_database
    output = run_bench("seed.py", ["--tenants", "2", "--devices", "40", "--migrate", "--quiet"], seed_env)
    figures = json.loads(output.strip().splitlines()[-1])
    assert figures["devices"] == 40 and figures["tenants"] == 2 and figures["accounts"] == 8


def test_api_floor_measures_every_layer(bench_env, tmp_path):
    env, args, _ = bench_env
    run_bench(
        "api_floor.py",
        [
            *args,
            "--devices",
            "20",
            "--seconds",
            "1",
            "--repeat",
            "1",
            "--connections",
            "2",
            "--base-port",
            str(_free_base_port()),
            "--results-dir",
            str(tmp_path),
            "--name",
            "floor",
        ],
        env,
    )
    result = read_result(tmp_path, "floor")
    assert [case["case"] for case in result["cases"]][0].startswith("bare ASGI") and len(result["cases"]) == 6
    for case in result["cases"]:
        assert case["all_answers_2xx"], case
        assert case["worker_cpu_ms_per_request"] >= 0 and case["runs"][0]["requests_per_second"] > 0, case


def _needs_postgres_and_redis(args: list[str]) -> None:
    if "--embedded" in args or "" in args:
        pytest.skip("scenario 2 runs two workers behind HAProxy: it needs PostgreSQL and Redis")


@pytest.mark.postgres
@pytest.mark.redis
def test_commands_round_trip_through_the_proxy_reaches_the_browser(bench_env, tmp_path):
    env, args, _ = bench_env
    _needs_postgres_and_redis(args)
    run_bench(
        "commands.py",
        [
            *args,
            "--devices",
            "20",
            "--rates",
            "10",
            "--seconds",
            "2",
            "--echo-seconds",
            "2",
            "--settle",
            "1",
            "--warmup",
            "5",
            "--base-port",
            str(_free_base_port()),
            "--results-dir",
            str(tmp_path),
            "--name",
            "cmd",
        ],
        env,
    )
    result = read_result(tmp_path, "cmd")
    level = result["levels"][0]
    assert level["accepted"] == level["issued"] == 20, level
    assert level["pushed_to_browser"] == 20 and level["lost"] == 0, level
    assert level["round_trip"]["count"] == 20
    # Both workers served API requests or held devices: the proxy spread the work.
    assert len(result["devices_per_worker"]) == 2, result["devices_per_worker"]
    assert result["summary"]["echo_p50_ms"] is not None
    assert result["warmup"]["issued"] == result["warmup"]["pushed_to_browser"] == 5


@pytest.mark.timeout(420)
@pytest.mark.parametrize("mode", ["drop", "restart", "redis"])
def test_storm_brings_every_device_back_and_loses_no_command(bench_env, tmp_path, mode):
    env, args, _ = bench_env
    if mode == "redis" and "--embedded" in args:
        pytest.skip("the embedded default has no Redis to restart")
    run_bench(
        "storm.py",
        [
            *args,
            "--devices",
            "20",
            "--shards",
            "1",
            "--settle",
            "2",
            "--commands",
            "10",
            "--mode",
            mode,
            "--redis-down",
            "1",
            "--own-redis-port",
            str(_free_base_port()),
            "--base-port",
            str(_free_base_port()),
            "--results-dir",
            str(tmp_path),
            "--name",
            "storm",
        ],
        env,
        timeout=400,
    )
    result = read_result(tmp_path, "storm")
    assert result["completed"] and result["live_after"] in (20, None), result
    assert result["commands"]["issued"] == 10 and result["commands"]["lost"] == 0, result["commands"]
    assert result["commands"]["run_twice"] == 0, result["commands"]


def test_bulk_command_reaches_every_device(bench_env, tmp_path):
    env, args, _ = bench_env
    run_bench(
        "bulk.py",
        [
            *args,
            "--devices",
            "20",
            "--shards",
            "1",
            "--base-port",
            str(_free_base_port()),
            "--results-dir",
            str(tmp_path),
            "--name",
            "bulk",
        ],
        env,
    )
    result = read_result(tmp_path, "bulk")
    assert result["live_devices"] == 20
    assert result["statuses"] == {"succeeded": 20}, result["statuses"]
    assert result["all_delivered_s"] is not None and result["all_finished_s"] is not None
