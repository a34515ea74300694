"""A tiny run of bench/backup_throughput.py: it backs up, deduplicates, restores and writes sane JSON.

No timing is asserted: the figures depend on the machine (the full run's are in
bench/results/backup_throughput.json).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(240)


def test_it_measures_a_small_folder_against_raw_aes_ctr(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run(
        [
            sys.executable,
            "bench/backup_throughput.py",
            "--size-mib",
            "8",
            "--work-dir",
            str(tmp_path),
            "--results-dir",
            str(tmp_path / "results"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "results" / "backup_throughput.json").read_text())
    assert results["scenario"] == "backup_throughput" and results["raw_aes_256_ctr_mb_per_s"] > 0
    assert results["folder"]["mib"] == 8.0
    for label, figures in results["backups"].items():
        assert label in ("tmpfs", "disk")
        assert figures["first"]["bytes_read"] == 8 * 1024 * 1024
        assert figures["deduplicated"]["chunks_new"] == 0 < figures["first"]["chunks_new"]
        assert figures["restore"]["mb_per_s"] > 0 and 0 < results["ratio"][label] < 1
    assert "disk" in results["backups"]
    assert set(results["stages_mb_per_s_one_core"]) >= {
        "hmac_sha256_chunk_id",
        "seal_aes_ctr_poly1305",
        "python_gear_cdc",
    }
    assert not [path for path in tmp_path.iterdir() if path.name.startswith("backup-bench-")]  # cleaned up
