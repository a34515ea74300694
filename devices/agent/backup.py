"""The files-and-folders backup job: copy a protected folder into a snapshot of a local vault.

Runs in a worker thread (the agent calls `scan` and `run` through asyncio.to_thread) so that the
event loop keeps sending heartbeats; the loop reads `counters` and may set `cancel` at any time.

A snapshot is written as `<vault>/<item_id>/<UTC time>.partial/...` and renamed to
`<vault>/<item_id>/<UTC time>/...` only when the job ends succeeded or warning, so the vault never
holds a half-written snapshot under a final name.

NOT ENCRYPTED YET. docs/crypto.md specifies per-vault A and E keys with AES-256-CTR and Poly1305;
until that lands (a later issue) snapshots are plain copies, which is why the vault's files and
folders are created readable by their owner only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any

from devices import protocol

CHUNK_BYTES = 1024 * 1024
MESSAGE_LIMIT = 1000  # characters of one job log line, as docs/protocol.md allows
PARTIAL_SUFFIX = ".partial"


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


def walk_files(source: Path, *, exclude: Path | None = None) -> tuple[list[SourceFile], list[str]]:
    """Return the regular files under `source` (or `source` itself) and the problems met on the way.

    Symbolic links are not followed and special files (FIFOs, sockets, devices) are left out: reading
    a FIFO would block the job forever. `exclude` (the vault, when it lies inside the protected
    folder) is skipped so that a backup never copies its own output.
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
    """A job's counters, written by the worker thread and read by the event loop."""

    files_total: int = 0
    files_done: int = 0
    files_skipped: int = 0
    bytes_total: int = 0
    bytes_read: int = 0
    bytes_uploaded: int = 0
    bytes_processed: int = 0  # bytes of files finished or skipped, plus the current file's bytes read
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def percent(self) -> float:
        if self.bytes_total:
            return round(min(100.0, 100.0 * self.bytes_processed / self.bytes_total), 1)
        if self.files_total:
            return round(100.0 * (self.files_done + self.files_skipped) / self.files_total, 1)
        return 0.0

    def snapshot(self) -> dict[str, Any]:
        """Return the counters as the protocol's job_progress fields, read consistently."""
        with self._lock:
            return {
                "percent": self.percent(),
                "files_done": self.files_done,
                "files_total": self.files_total,
                "bytes_read": self.bytes_read,
                "bytes_uploaded": self.bytes_uploaded,
            }


class JobCancelled(Exception):
    pass


class BackupJob:
    """One backup of one protected folder into one local vault."""

    kind = "backup"

    def __init__(self, *, source: Path, vault_dir: Path, item_id: str, vault_id: str, logger: Any = None) -> None:
        self.job_id = str(uuid.uuid4())
        self.source, self.vault_dir = source, vault_dir
        self.item_id, self.vault_id = item_id, vault_id
        self.counters = Counters()
        self.cancel = threading.Event()
        self.log_lines: list[dict[str, str]] = []
        self.status = "running"
        self.snapshot_dir: Path | None = None
        self.scan_problems = 0
        self.started_at = time.monotonic()
        self._files: list[SourceFile] = []
        self._logger = logger

    # --- The job log -------------------------------------------------------------------------

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

    # --- Work (called in a worker thread) ----------------------------------------------------

    def scan(self) -> int:
        """List the files to copy; return how many there are."""
        files, problems = walk_files(self.source, exclude=self.vault_dir)
        for problem in problems:
            self.log("warning", problem)
        with self.counters._lock:
            self.counters.files_total = len(files)
            self.counters.bytes_total = sum(source_file.size for source_file in files)
        self.scan_problems = len(problems)
        self._files = files
        return len(files)

    def run(self) -> str:
        """Copy every listed file into a new snapshot; return the job's final status."""
        if not self.source.exists():
            self.log("error", f"The protected path {self.source} does not exist.")
            self.status = "failed"
            return self.status
        self.log("info", f"Backing up {self.source} ({len(self._files)} files) to vault {self.vault_dir}.")
        partial = self._new_snapshot_folder()
        try:
            for source_file in self._files:
                self._check_cancelled()
                self._copy(source_file, partial)
            self._check_cancelled()
        except JobCancelled:
            shutil.rmtree(partial, ignore_errors=True)
            self.log("warning", "Cancelled; the partial snapshot was removed.")
            self.status = "cancelled"
            return self.status
        except OSError as error:
            shutil.rmtree(partial, ignore_errors=True)
            self.log("error", f"Writing to the vault failed: {error}")
            self.status = "failed"
            return self.status
        final = partial.with_name(partial.name.removesuffix(PARTIAL_SUFFIX))
        partial.rename(final)
        self.snapshot_dir = final
        counters = self.counters
        self.status = "warning" if counters.files_skipped or self.scan_problems else "succeeded"
        elapsed = time.monotonic() - self.started_at
        self.log(
            "info",
            f"Copied {counters.files_done} of {counters.files_total} files, {counters.bytes_uploaded} bytes, "
            f"in {elapsed:.1f} s into snapshot {final.name}.",
        )
        return self.status

    def _check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise JobCancelled

    def _new_snapshot_folder(self) -> Path:
        item_folder = self.vault_dir / self.item_id
        item_folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        for attempt in range(1000):
            name = stamp if attempt == 0 else f"{stamp}-{attempt}"
            if (item_folder / name).exists():
                continue
            try:
                (item_folder / (name + PARTIAL_SUFFIX)).mkdir(mode=0o700)
            except FileExistsError:
                continue
            return item_folder / (name + PARTIAL_SUFFIX)
        raise OSError(f"cannot create a snapshot folder in {item_folder}")

    def _copy(self, source_file: SourceFile, snapshot: Path) -> None:
        """Copy one file chunk by chunk; skip it with a warning if the source cannot be read."""
        target = snapshot / source_file.relative
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        counters = self.counters
        read = written = 0
        try:
            source = open(source_file.path, "rb")  # noqa: SIM115 - closed below, errors told apart
        except OSError as error:
            self._skip(source_file, error, read, written)
            return
        try:
            # A source that cannot be read is the customer's file: skip it. A vault that cannot be
            # written is the job's destination: fail the whole job (the OSError propagates).
            descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
            with os.fdopen(descriptor, "wb") as output:
                while True:
                    self._check_cancelled()
                    try:
                        chunk = source.read(CHUNK_BYTES)
                    except OSError as error:
                        output.close()
                        target.unlink(missing_ok=True)
                        self._skip(source_file, error, read, written)
                        return
                    if not chunk:
                        break
                    output.write(chunk)
                    read += len(chunk)
                    written += len(chunk)
                    with counters._lock:
                        counters.bytes_read += len(chunk)
                        counters.bytes_uploaded += len(chunk)
                        counters.bytes_processed += len(chunk)
        finally:
            source.close()
        try:
            status = source_file.path.stat()
            os.utime(target, ns=(status.st_atime_ns, status.st_mtime_ns))
        except OSError:
            pass  # the copy is complete; only its timestamps could not be kept
        with counters._lock:
            counters.files_done += 1
            # The file may have grown or shrunk since the scan: account for the size it was listed with.
            counters.bytes_processed += source_file.size - read

    def _skip(self, source_file: SourceFile, error: OSError, read: int, written: int) -> None:
        counters = self.counters
        with counters._lock:
            counters.files_skipped += 1
            counters.bytes_uploaded -= written
            counters.bytes_processed += source_file.size - read
        self.log("warning", f"Skipped {source_file.path}: {error.strerror or error}")
