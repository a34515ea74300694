"""Where a vault's objects live: the Storage interface, and its local-directory implementation.

A vault is a flat set of named objects ("keys/<id>", "chunks/ab/<id>", "snapshots/<id>"), each
written whole and never modified, which is what an S3-compatible store offers too; an S3 backend
implements the same six methods. Everything stored is already sealed (devices.agent.crypto), so a
backend needs no secrets of its own beyond its credentials.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

NAME_PATTERN = re.compile(r"^[a-z]+(/[0-9A-Za-z._-]+)+$")
LOCK_FILE = "lock"


class StorageError(OSError):
    pass


class Storage(Protocol):
    """A vault's object store. Names are '/'-separated, like object keys."""

    def put(self, name: str, parts: Sequence[bytes | memoryview], *, exclusive: bool = False) -> int:
        """Store an object (the parts joined) under `name`, all or nothing; return its size.

        With `exclusive`, raise FileExistsError instead of replacing an object of that name (an
        S3-compatible store does this with a conditional put, If-None-Match: *).
        """
        ...

    def get(self, name: str) -> bytes:
        """Return an object; raise FileNotFoundError if there is none."""
        ...

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """Yield (name, size) of every object whose name starts with `prefix`."""
        ...

    def delete(self, name: str) -> None:
        """Delete an object (no error if it is gone already)."""
        ...

    def flush(self) -> None:
        """Make every object put so far durable: called before a snapshot's manifest, the commit point."""
        ...

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold the vault for one job: two writers (or a writer and a retention) never overlap."""
        ...


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name) or ".." in name.split("/"):
        raise ValueError(f"not an object name: {name!r}")
    return name


class LocalDirectoryStorage:
    """Objects as files under a folder, readable by their owner only.

    put writes a temporary file, fsyncs it (when `durable`), and renames it into place, so an object
    under its final name is always complete, even after a crash; flush fsyncs the folders that got
    new names, so the names survive too.
    """

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        self.root = root
        self.durable = durable
        self._dirty: set[Path] = set()
        self._dirty_lock = threading.Lock()
        self._made: set[Path] = set()

    def _path(self, name: str) -> Path:
        return self.root.joinpath(*check_name(name).split("/"))

    def put(self, name: str, parts: Sequence[bytes | memoryview], *, exclusive: bool = False) -> int:
        path = self._path(name)
        folder = path.parent
        if folder not in self._made:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._made.add(folder)
        temporary = folder / f".{path.name}.{uuid.uuid4().hex}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        try:
            descriptor = os.open(temporary, flags, 0o600)
        except FileNotFoundError:  # the folder went away since it was made (someone emptied the vault)
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            descriptor = os.open(temporary, flags, 0o600)
        try:
            size = sum(len(part) for part in parts)
            written = 0
            pending = [memoryview(part) for part in parts if len(part)]
            while pending:
                count = os.writev(descriptor, pending) if hasattr(os, "writev") else os.write(descriptor, pending[0])
                written += count
                while pending and count >= len(pending[0]):
                    count -= len(pending[0])
                    pending.pop(0)
                if pending and count:
                    pending[0] = pending[0][count:]
            if self.durable:
                os.fsync(descriptor)
        except BaseException:
            os.close(descriptor)
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        os.close(descriptor)
        if exclusive:
            try:
                os.link(temporary, path)  # fails, atomically, if the name is taken
            finally:
                temporary.unlink()
        else:
            os.replace(temporary, path)
        with self._dirty_lock:
            self._dirty.add(folder)
        assert written == size
        return size

    def get(self, name: str) -> bytes:
        return self._path(name).read_bytes()

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        top = prefix.split("/", 1)[0]
        base = self.root / top
        if not base.is_dir():
            return
        for folder, _, files in os.walk(base):
            relative = Path(folder).relative_to(self.root).as_posix()
            for file_name in files:
                if file_name.startswith("."):
                    continue  # a temporary file of an unfinished put
                name = f"{relative}/{file_name}"
                if name.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):
                        yield name, os.stat(os.path.join(folder, file_name)).st_size

    def delete(self, name: str) -> None:
        path = self._path(name)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with self._dirty_lock:
            self._dirty.add(path.parent)

    def flush(self) -> None:
        with self._dirty_lock:
            folders, self._dirty = self._dirty, set()
        if not self.durable or os.name == "nt":  # Windows cannot open a folder to fsync it
            return
        for folder in {*folders, *(folder.parent for folder in folders)}:
            with contextlib.suppress(FileNotFoundError):
                descriptor = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                import fcntl
            except ImportError:  # not POSIX: one agent per vault is the rule, unenforced
                yield
                return
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(descriptor, fcntl.LOCK_UN)
        finally:
            os.close(descriptor)
