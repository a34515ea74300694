"""The files-and-folders jobs: back a protected folder up into its encrypted vault, and apply retention.

Each job runs in a worker thread (the agent calls `scan` and `run` through asyncio.to_thread) so that
the event loop keeps sending heartbeats; the loop reads `counters` and may set `cancel` at any time.

A backup reads every file in fixed-size chunks of CHUNK_BYTES (a file's last chunk is shorter), names
each chunk by its keyed id (devices.agent.crypto.ChunkIds) and stores only the chunks the vault does
not hold yet: that is the deduplication, inside one vault. Sealing and writing run on a small thread
pool while this thread reads on. The snapshot's manifest (every file's path, size, time, mode and
chunk ids, sealed like a chunk) is written last, after every chunk is durable: a backup that stops
earlier leaves no snapshot, only whole chunks that the next backup reuses or retention removes.

Why fixed-size chunks and not content-defined ones: a rolling hash must visit every byte, and in
Python that ran at a few MB/s where this pipeline needs GB/s (bench/backup_throughput.py measures
both). Chunks aligned to each file's start still deduplicate unchanged files, copies of a file and
files that only grew at the end; an insertion inside a file stores the rest of that file again.
Only the chunker would change for content-defined chunking: manifests list chunk ids per file,
whatever cut them.
"""

from __future__ import annotations

import collections
import hashlib
import os
import queue
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any

from devices import protocol
from devices.agent import crypto
from devices.agent.vault import MANIFEST_FORMAT, Vault, VaultError, new_snapshot_id

CHUNK_BYTES = 1024 * 1024
MESSAGE_LIMIT = 1000  # characters of one job log line, as docs/protocol.md allows
WORKERS = max(2, min(8, os.cpu_count() or 2))


def stable_id(prefix: str, path: Path) -> str:
    """Return an id that stays the same for the same absolute path across restarts."""
    digest = hashlib.sha256(os.fsencode(str(path.absolute()))).hexdigest()
    return f"{prefix}-{digest[:24]}"


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class SourceFile:
    path: Path
    relative: PurePath
    size: int


def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        return path.resolve() == folder.resolve() or path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def walk_files(
    source: Path, *, exclude: Path | None = None, folders: list[PurePath] | None = None
) -> tuple[list[SourceFile], list[str]]:
    """Return the regular files under `source` (or `source` itself) and the problems met on the way.

    Symbolic links are not followed and special files (FIFOs, sockets, devices) are left out: reading
    a FIFO would block the job forever. `exclude` (the vault, when it lies inside the protected
    folder) is skipped so that a backup never copies its own output. Sub-folders are appended to
    `folders`, when given, so that a restore recreates empty ones too.
    """
    problems: list[str] = []
    if source.is_symlink() or not source.exists():
        return [], [f"{source} does not exist or is a symbolic link"]
    if source.is_file():
        return [SourceFile(source, PurePath(source.name), source.stat().st_size)], problems
    files: list[SourceFile] = []
    pending = [source]
    while pending:
        folder = pending.pop()
        if _inside(folder, exclude):
            continue
        try:
            with os.scandir(folder) as entries:
                children = sorted(entries, key=lambda entry: entry.name)
        except OSError as error:
            problems.append(f"cannot list {folder}: {error.strerror or error}")
            continue
        subfolders = []
        for entry in children:
            try:
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(Path(entry.path))
                    if folders is not None and not _inside(Path(entry.path), exclude):
                        folders.append(Path(entry.path).relative_to(source))
                elif entry.is_file(follow_symlinks=False):
                    path = Path(entry.path)
                    files.append(SourceFile(path, path.relative_to(source), entry.stat(follow_symlinks=False).st_size))
            except OSError as error:
                problems.append(f"cannot read {entry.path}: {error.strerror or error}")
        pending.extend(reversed(subfolders))
    return files, problems


def tree_size(path: Path, *, exclude: Path | None = None) -> int:
    """Return the total size in bytes of the regular files under `path` (0 if it is missing)."""
    files, _ = walk_files(path, exclude=exclude)
    return sum(source_file.size for source_file in files)


@dataclass
class Counters:
    """A job's counters, written by worker threads and read by the event loop."""

    files_total: int = 0
    files_done: int = 0
    files_skipped: int = 0
    bytes_total: int = 0
    bytes_read: int = 0
    bytes_uploaded: int = 0  # bytes written to the vault: new chunks sealed, and the manifest
    bytes_processed: int = 0  # bytes of files finished or skipped, plus the current file's bytes read
    chunks_total: int = 0
    chunks_new: int = 0  # chunks the vault did not hold yet
    bytes_new: int = 0  # plaintext bytes of those chunks; bytes_read / bytes_new is the dedup ratio
    vault_bytes_used: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def percent(self) -> float:
        if self.bytes_total:
            return round(min(100.0, 100.0 * self.bytes_processed / self.bytes_total), 1)
        if self.files_total:
            return round(100.0 * (self.files_done + self.files_skipped) / self.files_total, 1)
        return 0.0

    def dedup_ratio(self) -> float:
        """Return bytes read per byte newly stored (1.0: nothing was deduplicated)."""
        return round(self.bytes_read / self.bytes_new, 2) if self.bytes_new else 0.0

    def snapshot(self) -> dict[str, Any]:
        """Return the counters as the protocol's job_progress fields, read consistently."""
        with self._lock:
            return {
                "percent": self.percent(),
                "files_done": self.files_done,
                "files_total": self.files_total,
                "bytes_read": self.bytes_read,
                "bytes_uploaded": self.bytes_uploaded,
                "chunks_total": self.chunks_total,
                "chunks_new": self.chunks_new,
                "bytes_new": self.bytes_new,
                "vault_bytes_used": self.vault_bytes_used,
            }


class JobCancelled(Exception):
    pass


class Job:
    """What every job has: an id, counters, a cancel flag, a log, a status, and what it produced."""

    kind = ""

    def __init__(self, *, vault: Vault, item_id: str, logger: Any = None) -> None:
        self.job_id = str(uuid.uuid4())
        self.vault = vault
        self.item_id, self.vault_id = item_id, vault.vault_id
        self.counters = Counters()
        self.cancel = threading.Event()
        self.log_lines: list[dict[str, str]] = []
        self.status = "running"
        self.snapshot_id: str | None = None
        self.result: dict[str, Any] = {}
        self.started_at = time.monotonic()
        self._logger = logger

    @property
    def label(self) -> str:
        return self.kind

    def log(self, level: str, message: str) -> None:
        """Append a line to the job's log (sent with job_finished) and to the agent's own log."""
        message = message[:MESSAGE_LIMIT]
        self.log_lines.append({"time": utc_now_iso(), "level": level, "message": message})
        if self._logger is not None:
            self._logger.log(
                {"info": 20, "warning": 30, "error": 40}.get(level, 20), "job %s: %s", self.job_id, message
            )

    def finished_log_lines(self) -> list[dict[str, str]]:
        """Return at most protocol.MAX_LOG_LINES lines, the last ones, saying how many were left out."""
        lines = self.log_lines
        if len(lines) <= protocol.MAX_LOG_LINES:
            return list(lines)
        kept = lines[-(protocol.MAX_LOG_LINES - 1) :]
        omitted = len(lines) - len(kept)
        return [{"time": lines[0]["time"], "level": "warning", "message": f"{omitted} earlier lines left out"}, *kept]

    def _check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise JobCancelled

    def _fail(self, message: str) -> str:
        self.log("error", message)
        self.status = "failed"
        return self.status

    def scan(self) -> int:
        """Find out how much there is to do (files_total); never raises, run() reports problems."""
        return 0

    def run(self) -> str:
        raise NotImplementedError


def _read_full(handle: Any, buffer: bytearray) -> int:
    """Fill `buffer` from an unbuffered file; return the bytes read (fewer only at the end of the file)."""
    view = memoryview(buffer)
    count = 0
    while count < len(buffer):
        got = handle.readinto(view[count:])
        if not got:
            break
        count += got
    return count


class BackupJob(Job):
    """One backup of one protected folder into one encrypted vault."""

    kind = "backup"

    def __init__(
        self,
        *,
        source: Path,
        vault: Vault,
        item_id: str,
        exclude: Path | None = None,
        keep_snapshots: int | None = None,
        logger: Any = None,
        workers: int = WORKERS,
    ) -> None:
        super().__init__(vault=vault, item_id=item_id, logger=logger)
        self.source, self.exclude = source, exclude
        self.keep_snapshots = keep_snapshots
        self.workers = workers
        self.scan_problems = 0
        self._files: list[SourceFile] = []
        self._folders: list[PurePath] = []
        self._known: set[str] = set()
        self._claim = threading.Lock()
        self._seal_buffers = threading.local()

    @property
    def label(self) -> str:
        return f"backup {self.source.name or self.source}"

    def scan(self) -> int:
        """List the files to back up; return how many there are."""
        folders: list[PurePath] = []
        files, problems = walk_files(self.source, exclude=self.exclude, folders=folders)
        for problem in problems:
            self.log("warning", problem)
        with self.counters._lock:
            self.counters.files_total = len(files)
            self.counters.bytes_total = sum(source_file.size for source_file in files)
        self.scan_problems = len(problems)
        self._files, self._folders = files, folders
        return len(files)

    def run(self) -> str:
        """Back every listed file up into a new snapshot; return the job's final status."""
        if not self.source.exists():
            return self._fail(f"The protected path {self.source} does not exist.")
        self.log("info", f"Backing up {self.source} ({len(self._files)} files) to vault {self.vault_id}.")
        retention_failed = False
        try:
            with self.vault.storage.lock():
                self._back_up()
                if self.keep_snapshots:
                    retention_failed = not self._retain(self.keep_snapshots)
        except JobCancelled:
            self.log("warning", "Cancelled; no snapshot was written. Chunks already stored are reused next time.")
            self.status = "cancelled"
            return self.status
        except crypto.IntegrityError as error:
            return self._fail(f"The vault failed verification: {error}")
        except VaultError as error:
            return self._fail(str(error))
        except OSError as error:
            return self._fail(f"Writing to the vault failed: {error}")
        counters = self.counters
        problems = counters.files_skipped or self.scan_problems or retention_failed
        self.status = "warning" if problems else "succeeded"
        elapsed = time.monotonic() - self.started_at
        self.log(
            "info",
            f"Backed up {counters.files_done} of {counters.files_total} files ({counters.bytes_read} bytes) in "
            f"{elapsed:.1f} s into snapshot {self.snapshot_id}: {counters.chunks_new} of {counters.chunks_total} "
            f"chunks were new, {counters.bytes_uploaded} bytes stored, dedup ratio {counters.dedup_ratio()}.",
        )
        return self.status

    def _retain(self, keep: int) -> bool:
        """Apply retention after the snapshot was written; a failure leaves the snapshot and warns."""
        try:
            apply_retention(self, keep=keep)
        except (crypto.IntegrityError, VaultError, OSError) as error:
            self.log("warning", f"The snapshot was written, but retention failed: {error}")
            return False
        return True

    # --- The pipeline: this thread reads, the pool hashes, seals and writes --------------------

    def _back_up(self) -> None:
        stored = self.vault.stored_chunks()
        self._known = set(stored)
        with self.counters._lock:
            self.counters.vault_bytes_used = self.vault.usage(stored)
        # Reusable read buffers: taking one waits while all are in flight, which bounds memory.
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(2 * self.workers + 2):
            self._free.put(bytearray(CHUNK_BYTES))
        files: list[dict[str, Any]] = []
        pending: collections.deque[tuple[dict[str, Any], list[Future[str]]]] = collections.deque()
        abandoned: list[Future[str]] = []  # chunks of files skipped half-way: still written, not listed
        with ThreadPoolExecutor(self.workers, thread_name_prefix="backup") as pool:
            try:
                for source_file in self._files:
                    self._check_cancelled()
                    read = self._read_file(source_file, pool, abandoned)
                    if read is not None:
                        pending.append(read)
                    while pending and all(future.done() for future in pending[0][1]):
                        files.append(_finished_entry(*pending.popleft()))
                self._check_cancelled()
            finally:
                for future in abandoned:
                    future.exception()  # wait; a failed write shows up below through the listed ones
            while pending:
                files.append(_finished_entry(*pending.popleft()))
            for future in abandoned:
                future.result()
        self.vault.storage.flush()  # every chunk durable before the manifest that names it
        self.snapshot_id = new_snapshot_id()
        manifest = {
            "format": MANIFEST_FORMAT,
            "snapshot_id": self.snapshot_id,
            "item_id": self.item_id,
            "source": str(self.source),
            "created_at": utc_now_iso(),
            "chunk_bytes": CHUNK_BYTES,
            "files": files,
            "folders": sorted(folder.as_posix() for folder in self._folders),
        }
        size = self.vault.write_manifest(manifest)
        with self.counters._lock:
            self.counters.bytes_uploaded += size
            self.counters.vault_bytes_used += size
        self.result = {"snapshot_id": self.snapshot_id}

    def _read_file(
        self, source_file: SourceFile, pool: ThreadPoolExecutor, abandoned: list[Future[str]]
    ) -> tuple[dict[str, Any], list[Future[str]]] | None:
        """Read one file chunk by chunk, handing each to the pool; None if it had to be skipped."""
        counters = self.counters
        try:
            handle = open(source_file.path, "rb", buffering=0)  # noqa: SIM115 - closed below, errors told apart
        except OSError as error:
            self._skip(source_file, error, 0)
            return None
        futures: list[Future[str]] = []
        read = 0
        with handle:
            try:
                status = os.fstat(handle.fileno())
            except OSError as error:
                self._skip(source_file, error, 0)
                return None
            while True:
                self._check_cancelled()
                buffer = self._free.get()
                try:
                    count = _read_full(handle, buffer)
                except OSError as error:
                    self._free.put(buffer)
                    abandoned.extend(futures)
                    self._skip(source_file, error, read)
                    return None
                if not count:
                    self._free.put(buffer)
                    break
                futures.append(pool.submit(self._store_chunk, buffer, count))
                read += count
                with counters._lock:
                    counters.bytes_read += count
                    counters.bytes_processed += count
                if count < len(buffer):
                    break
        with counters._lock:
            counters.files_done += 1
            # The file may have grown or shrunk since the scan: account for the size it was listed with.
            counters.bytes_processed += source_file.size - read
        entry = {
            "path": source_file.relative.as_posix(),
            "size": read,
            "mtime_ns": status.st_mtime_ns,
            "mode": status.st_mode & 0o7777,
        }
        return entry, futures

    def _store_chunk(self, buffer: bytearray, count: int) -> str:
        """Name one chunk and store it unless the vault holds it already; return its id. (Pool thread.)"""
        try:
            self._check_cancelled()  # chunks still queued are dropped at once
            data = memoryview(buffer)[:count]
            chunk_id = self.vault.chunk_ids_of.of(data)
            with self._claim:
                new = chunk_id not in self._known
                self._known.add(chunk_id)
            stored = self.vault.put_chunk(chunk_id, data, self._seal_buffer()) if new else 0
        finally:
            self._free.put(buffer)
        counters = self.counters
        with counters._lock:
            counters.chunks_total += 1
            if new:
                counters.chunks_new += 1
                counters.bytes_new += count
                counters.bytes_uploaded += stored
                counters.vault_bytes_used += stored
        return chunk_id

    def _seal_buffer(self) -> bytearray:
        buffer = getattr(self._seal_buffers, "buffer", None)
        if buffer is None:
            buffer = self._seal_buffers.buffer = bytearray(CHUNK_BYTES + 16)
        return buffer

    def _skip(self, source_file: SourceFile, error: OSError, read: int) -> None:
        counters = self.counters
        with counters._lock:
            counters.files_skipped += 1
            counters.bytes_processed += source_file.size - read
        self.log("warning", f"Skipped {source_file.path}: {error.strerror or error}")


def _finished_entry(entry: dict[str, Any], futures: list[Future[str]]) -> dict[str, Any]:
    return {**entry, "chunks": [future.result() for future in futures]}


def apply_retention(job: Job, *, keep: int) -> None:
    """Keep the newest `keep` snapshots of the job's item and delete unused chunks (vault lock held)."""
    outcome = job.vault.retain(item_id=job.item_id, keep=keep)
    with job.counters._lock:
        job.counters.vault_bytes_used = job.vault.usage()
    job.result.update(
        snapshots_deleted=len(outcome.snapshots_deleted),
        chunks_deleted=outcome.chunks_deleted,
        bytes_freed=outcome.bytes_freed,
    )
    job.log(
        "info",
        f"Retention kept the {keep} newest snapshots: deleted {len(outcome.snapshots_deleted)} snapshots and "
        f"{outcome.chunks_deleted} chunks no snapshot uses ({outcome.bytes_freed} bytes freed).",
    )


class RetentionJob(Job):
    """Apply retention to one protected item's snapshots in a vault, on its own."""

    kind = "retention"

    def __init__(self, *, vault: Vault, item_id: str, keep: int, logger: Any = None) -> None:
        super().__init__(vault=vault, item_id=item_id, logger=logger)
        self.keep = keep

    def run(self) -> str:
        try:
            with self.vault.storage.lock():
                apply_retention(self, keep=self.keep)
        except crypto.IntegrityError as error:
            return self._fail(f"Nothing was deleted: a snapshot failed verification: {error}")
        except (VaultError, OSError) as error:
            return self._fail(f"Retention failed: {error}")
        self.status = "succeeded"
        return self.status
