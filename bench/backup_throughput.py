"""Backup throughput of the reference agent against raw AES-256-CTR on the same machine, in the same run.

    .venv/bin/python bench/backup_throughput.py                  # a 1 GiB folder, vault on tmpfs and on disk
    .venv/bin/python bench/backup_throughput.py --size-mib 64 --vault-on tmpfs

It writes a folder of random files (by default 1 GiB: 16 files of 48 MiB, 64 of 3 MiB and 1,024 of
64 KiB), reads it once so that it sits in the page cache (the figure is the agent's pipeline, not
the source disk), then:

- measures raw AES-256-CTR on one core: `cryptography`'s CTR encryptor over the same number of
  bytes in 1 MiB pieces into a reused buffer, the best of three runs, before and after the backups;
- measures each stage of the pipeline alone on one core (HMAC-SHA256 chunk ids, sealing, Poly1305,
  reading from the page cache, writing a sealed chunk to the vault) and a pure-Python content-
  defined chunker (a gear rolling hash), the reason the agent cuts fixed-size chunks;
- runs a real BackupJob (devices/agent/backup.py) into a fresh vault: on tmpfs (/dev/shm, the
  pipeline without a disk under it) and on the disk next to the source (fsync on, as the agent
  does it); then a second, fully deduplicated backup, and a restore;

and reports MB/s (10^6 bytes per second of plaintext read), the ratio backup / raw AES-CTR, and
the bound the stage costs put on that ratio on this many cores. Figures go to stdout and to
bench/results/backup_throughput.json (--results-dir to change). Every folder it makes is deleted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import poly1305  # noqa: E402
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402

from bench.common import code_version, loadavg, machine_info, write_result  # noqa: E402
from devices.agent import backup, crypto, profile  # noqa: E402
from devices.agent.restore import RestoreJob  # noqa: E402
from devices.agent.storage import LocalDirectoryStorage  # noqa: E402

MIB = 1024 * 1024
AIM = 0.6


class MemoryProfile:
    """The account's profile secrets, in memory: the portal plays no part in the throughput."""

    def __init__(self) -> None:
        self.version, self.blob = 0, b""

    def fetch(self) -> profile.StoredProfile:
        return profile.StoredProfile(self.version, self.blob)

    def store(self, *, version: int, blob: bytes) -> int:
        self.blob, self.version = blob, self.version + 1
        return self.version


def layout(size_mib: int) -> list[tuple[str, int]]:
    """Return (relative path, size) of the folder: 75 % of the bytes in big files, 25 % in small ones."""
    if size_mib < 64:  # a smoke-sized folder: a few files of each kind
        return [(f"big/{n:02d}.bin", size_mib * MIB // 4) for n in range(3)] + [
            (f"small/{n:04d}.dat", 64 * 1024) for n in range(size_mib * 4)
        ]
    scale = size_mib / 1024
    files = [(f"big/{n:02d}.bin", 48 * MIB) for n in range(round(16 * scale))]
    files += [(f"medium/{n:02d}.bin", 3 * MIB) for n in range(round(64 * scale))]
    files += [(f"small/{n // 64:02d}/{n:04d}.dat", 64 * 1024) for n in range(round(1024 * scale))]
    return files


def make_folder(root: Path, size_mib: int) -> int:
    total = 0
    for relative, size in layout(size_mib):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            remaining = size
            while remaining:
                piece = min(remaining, 16 * MIB)
                handle.write(os.urandom(piece))
                remaining -= piece
        total += size
    return total


def warm(root: Path) -> float:
    """Read every file once (into the page cache); return the read rate in MB/s."""
    buffer = bytearray(MIB)
    started, total = time.perf_counter(), 0
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb", buffering=0) as handle:
                while count := handle.readinto(buffer):
                    total += count
    return total / (time.perf_counter() - started) / 1e6


def raw_aes_ctr(total: int, runs: int = 3) -> list[float]:
    """MB/s of AES-256-CTR alone on one core: `total` bytes in 1 MiB pieces into a reused buffer."""
    data, output = os.urandom(MIB), bytearray(MIB + 16)
    key, pieces = os.urandom(32), max(1, total // MIB)
    rates = []
    for _ in range(runs):
        encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        started = time.perf_counter()
        for _ in range(pieces):
            encryptor.update_into(data, output)
        rates.append(round(pieces * MIB / (time.perf_counter() - started) / 1e6, 1))
    return rates


def stage_rates(sample_mib: int, scratch: Path) -> dict[str, float]:
    """MB/s of each stage of the pipeline alone, on one core, over `sample_mib` 1 MiB pieces."""
    data = bytearray(os.urandom(MIB))
    view = memoryview(data)
    key = os.urandom(32)
    ids = crypto.ChunkIds(key)
    seal_buffer = bytearray(MIB + 16)

    def rate(step: Any, count: int = sample_mib) -> float:
        started = time.perf_counter()
        for index in range(count):
            step(index)
        return round(count * MIB / (time.perf_counter() - started) / 1e6, 1)

    def poly(index: int) -> None:
        mac = poly1305.Poly1305(key)
        mac.update(view)
        mac.finalize()

    storage = LocalDirectoryStorage(scratch, durable=False)
    head, ciphertext, tag = crypto.seal_parts(key, crypto.Kind.CHUNK, ("v", "c"), view, buffer=seal_buffer)
    results = {
        "hmac_sha256_chunk_id": rate(lambda index: ids.of(view)),
        "poly1305": rate(poly),
        "seal_aes_ctr_poly1305": rate(
            lambda index: crypto.seal_parts(key, crypto.Kind.CHUNK, ("v", "c"), view, buffer=seal_buffer)
        ),
        "write_sealed_chunk_no_fsync": rate(
            lambda index: storage.put(f"chunks/00/{index:064x}", [head, ciphertext, tag]), min(sample_mib, 256)
        ),
        "python_gear_cdc": _gear_cdc_rate(),
    }
    shutil.rmtree(scratch, ignore_errors=True)
    return results


def _gear_cdc_rate(size: int = 2 * MIB) -> float:
    """MB/s of FastCDC's gear rolling hash in pure Python: the content-defined chunker not taken."""
    import random

    gear = [random.Random(1).getrandbits(64) for _ in range(256)]
    data = os.urandom(size)
    mask, state, cuts = (1 << 64) - 1, 0, 0
    started = time.perf_counter()
    for byte in data:
        state = ((state << 1) + gear[byte]) & mask
        if not state & 0xFFFFF00000000000:
            cuts += 1
    return round(size / (time.perf_counter() - started) / 1e6, 2)


def run_backup(source: Path, vault_dir: Path, workers: int) -> dict[str, Any]:
    """Back `source` up into a new vault, again (everything deduplicated), and restore it once."""
    store = MemoryProfile()
    keyring = profile.Keyring(
        store, profile_key=crypto.profile_key(os.urandom(24)), account=profile.AccountIdentity("bench", "bench")
    )
    storage = LocalDirectoryStorage(vault_dir)
    # The kind of file system, not the path: a machine's paths stay out of the results.
    on_tmpfs = str(vault_dir).startswith("/dev/shm")
    figures: dict[str, Any] = {
        "vault": "a temporary folder on tmpfs" if on_tmpfs else "a temporary folder on disk",
        "workers": workers,
    }
    for label in ("first", "deduplicated"):
        job = backup.BackupJob(
            source=source,
            vault=keyring.open_vault(storage, "bench-vault", create=True),
            item_id="bench",
            workers=workers,
        )
        job.scan()
        started = time.perf_counter()
        status = job.run()
        seconds = time.perf_counter() - started
        counters = job.counters.snapshot()
        assert status == "succeeded", job.log_lines
        figures[label] = {
            "seconds": round(seconds, 3),
            "mb_per_s": round(counters["bytes_read"] / seconds / 1e6, 1),
            "bytes_read": counters["bytes_read"],
            "bytes_uploaded": counters["bytes_uploaded"],
            "chunks_new": counters["chunks_new"],
            "chunks_total": counters["chunks_total"],
        }
    target = Path(tempfile.mkdtemp(dir=vault_dir.parent, prefix="restored-"))
    shutil.rmtree(target)
    restore = RestoreJob(vault=keyring.open_vault(storage, "bench-vault", create=False), target=target, item_id="bench")
    restore.scan()
    started = time.perf_counter()
    assert restore.run() == "succeeded", restore.log_lines
    seconds = time.perf_counter() - started
    figures["restore"] = {
        "seconds": round(seconds, 3),
        "mb_per_s": round(restore.counters.bytes_read / seconds / 1e6, 1),
    }
    shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(vault_dir, ignore_errors=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the folder (default 1024: 1 GiB)")
    parser.add_argument("--vault-on", choices=["tmpfs", "disk", "both"], default="both")
    parser.add_argument("--workers", type=int, default=backup.WORKERS, help="the backup's worker threads")
    parser.add_argument("--work-dir", help="where the source folder goes (default: the system's temp folder)")
    parser.add_argument("--results-dir", help="where to write backup_throughput.json (default bench/results)")
    arguments = parser.parse_args()

    work = Path(tempfile.mkdtemp(dir=arguments.work_dir, prefix="backup-bench-"))
    shm = Path("/dev/shm")
    tmpfs_root = Path(tempfile.mkdtemp(dir=shm, prefix="backup-bench-")) if shm.is_dir() else None
    try:
        load_before = loadavg()
        print(f"Writing a {arguments.size_mib} MiB folder of random files into {work} ...", flush=True)
        total = make_folder(work / "source", arguments.size_mib)
        read_rate = warm(work / "source")
        raw_before = raw_aes_ctr(total)
        stages = stage_rates(min(256, max(16, arguments.size_mib // 4)), (tmpfs_root or work) / "stage-scratch")
        stages["read_page_cache"] = round(read_rate, 1)
        backups: dict[str, Any] = {}
        if arguments.vault_on in ("tmpfs", "both") and tmpfs_root is not None:
            print("Backing up into a vault on tmpfs ...", flush=True)
            backups["tmpfs"] = run_backup(work / "source", tmpfs_root / "vault", arguments.workers)
        if arguments.vault_on in ("disk", "both"):
            print("Backing up into a vault on disk (fsync on) ...", flush=True)
            backups["disk"] = run_backup(work / "source", work / "vault", arguments.workers)
        raw_after = raw_aes_ctr(total)
        raw = max(raw_before + raw_after)
        # The best the pipeline could do here: every stage's cost per byte, spread over the cores.
        per_byte = sum(
            1 / stages[name]
            for name in (
                "hmac_sha256_chunk_id",
                "seal_aes_ctr_poly1305",
                "write_sealed_chunk_no_fsync",
                "read_page_cache",
            )
        )
        cores = os.cpu_count() or 1
        bound = round(min(1.0, cores / per_byte / raw), 3)
        results: dict[str, Any] = {
            "scenario": "backup_throughput",
            **code_version(),
            "machine": machine_info(),
            "load_average": {"before": load_before, "after": loadavg()},
            "folder": {"mib": round(total / MIB, 1), "files": len(layout(arguments.size_mib))},
            "chunk_bytes": backup.CHUNK_BYTES,
            "raw_aes_256_ctr_mb_per_s": raw,
            "raw_aes_256_ctr_runs": {"before": raw_before, "after": raw_after},
            "stages_mb_per_s_one_core": stages,
            "backups": backups,
            "ratio": {label: round(figures["first"]["mb_per_s"] / raw, 3) for label, figures in backups.items()},
            "aim": AIM,
            "stage_bound_ratio": bound,
        }
        path = write_result("backup_throughput", results, arguments.results_dir)
        print(f"raw AES-256-CTR: {raw} MB/s (one core)")
        for label, figures in backups.items():
            print(
                f"backup, vault on {label}: {figures['first']['mb_per_s']} MB/s "
                f"({results['ratio'][label]:.0%} of raw; aim {AIM:.0%}); deduplicated again: "
                f"{figures['deduplicated']['mb_per_s']} MB/s; restore: {figures['restore']['mb_per_s']} MB/s"
            )
        print(f"stages (one core, MB/s): {stages}")
        print(f"bound from the stage costs on {cores} cores: {bound:.0%} of raw")
        print(f"wrote {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if tmpfs_root is not None:
            shutil.rmtree(tmpfs_root, ignore_errors=True)


if __name__ == "__main__":
    main()
