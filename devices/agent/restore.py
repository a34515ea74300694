"""The restore job: write one snapshot's files into a target folder, verifying everything first.

Nothing unverified reaches the target: the manifest and every chunk are checked (their Poly1305 tag,
and a chunk's content against its keyed id) before any of their bytes are written, each file is
written to a temporary name beside its final one and renamed only once all of its chunks passed and
its size matches the manifest. A damaged or altered object stops the restore with an error that
names the object; the files restored before it are complete and correct, the one it belongs to is
not written at all.

The target must be a folder that does not exist yet or is empty: a restore never overwrites a file.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

from devices.agent import crypto
from devices.agent.backup import Job, JobCancelled
from devices.agent.vault import Vault, VaultError


def safe_relative(path: str) -> PurePosixPath:
    """Return a manifest path as a relative path that cannot leave the target folder."""
    relative = PurePosixPath(path)
    if relative.is_absolute() or not relative.parts or any(part in ("", ".", "..") for part in relative.parts):
        raise VaultError(f"The snapshot names a path that would leave the target folder: {path!r}.")
    return relative


class RestoreJob(Job):
    kind = "restore"

    def __init__(
        self, *, vault: Vault, target: Path, item_id: str = "", snapshot_id: str | None = None, logger: Any = None
    ) -> None:
        super().__init__(vault=vault, item_id=item_id, logger=logger)
        self.target = target
        self.snapshot_id = snapshot_id
        self._manifest: dict[str, Any] | None = None
        self._problem = ""

    @property
    def label(self) -> str:
        return f"restore to {self.target.name or self.target}"

    def scan(self) -> int:
        """Read (and verify) the snapshot's manifest; the newest of the item's when none is named."""
        try:
            with self.vault.storage.lock():
                if self.snapshot_id is None:
                    self.snapshot_id = self.vault.latest_snapshot(self.item_id)
                    if self.snapshot_id is None:
                        raise VaultError(f"Vault {self.vault_id} holds no snapshot of {self.item_id}.")
                self._manifest = self.vault.read_manifest(self.snapshot_id)
        except crypto.IntegrityError as error:
            self._problem = f"The snapshot failed verification: {error}"
            return 0
        except (VaultError, OSError, ValueError) as error:
            self._problem = str(error)
            return 0
        self.item_id = self.item_id or self._manifest.get("item_id", "")
        files = self._manifest["files"]
        with self.counters._lock:
            self.counters.files_total = len(files)
            self.counters.bytes_total = sum(entry["size"] for entry in files)
        return len(files)

    def run(self) -> str:
        if self._manifest is None:
            return self._fail(self._problem or "The snapshot could not be read.")
        if not self.target.is_absolute():
            return self._fail(f"The restore target must be an absolute path, not {self.target}.")
        try:
            if self.target.exists() and (not self.target.is_dir() or any(self.target.iterdir())):
                return self._fail(f"The restore target {self.target} exists and is not empty; name a new folder.")
            self.target.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as error:
            return self._fail(f"Cannot create the restore target {self.target}: {error}")
        self.log(
            "info",
            f"Restoring snapshot {self.snapshot_id} ({len(self._manifest['files'])} files) to {self.target}.",
        )
        current = ""
        try:
            with self.vault.storage.lock():
                for folder in self._manifest.get("folders", []):
                    (self.target / safe_relative(folder)).mkdir(parents=True, exist_ok=True, mode=0o700)
                for entry in self._manifest["files"]:
                    self._check_cancelled()
                    current = entry["path"]
                    self._restore_file(entry)
        except JobCancelled:
            self.log("warning", "Cancelled; the files restored so far are complete, the rest were not written.")
            self.status = "cancelled"
            return self.status
        except crypto.IntegrityError as error:
            return self._fail(
                f"Restore stopped: {error.name} failed verification ({error.reason}). {current or 'The snapshot'} "
                "was not written; every file restored before it was verified."
            )
        except (VaultError, OSError) as error:
            return self._fail(f"Restore stopped at {current or 'the start'}: {error}")
        counters = self.counters
        self.result = {
            "snapshot_id": self.snapshot_id,
            "target": str(self.target),
            "files_restored": counters.files_done,
        }
        self.log("info", f"Restored {counters.files_done} files ({counters.bytes_read} bytes), every chunk verified.")
        self.status = "succeeded"
        return self.status

    def _restore_file(self, entry: dict[str, Any]) -> None:
        destination = self.target.joinpath(*safe_relative(entry["path"]).parts)
        destination.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if destination.exists():
            raise VaultError(f"{destination} exists already; the snapshot lists it twice.")
        temporary = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.restoring")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        try:
            written = 0
            with os.fdopen(descriptor, "wb") as output:
                for chunk_id in entry["chunks"]:
                    self._check_cancelled()
                    data = self.vault.get_chunk(chunk_id)  # verified, or IntegrityError: nothing written
                    output.write(data)
                    written += len(data)
                    with self.counters._lock:
                        self.counters.bytes_read += len(data)
                        self.counters.bytes_processed += len(data)
                if written != entry["size"]:
                    raise crypto.IntegrityError(
                        self.vault.snapshot_name(self.snapshot_id or ""),
                        f"lists {written} bytes of chunks for {entry['path']}, which it says holds {entry['size']}",
                    )
                output.flush()
                os.fsync(output.fileno())
            os.chmod(temporary, entry.get("mode", 0o600) & 0o777)
            if "mtime_ns" in entry:
                os.utime(temporary, ns=(entry["mtime_ns"], entry["mtime_ns"]))
            os.replace(temporary, destination)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        with self.counters._lock:
            self.counters.files_done += 1
