"""What the device tells the portal about itself: name, OS, time zone, protected items, vaults."""

from __future__ import annotations

import contextlib
import platform
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from devices.agent import __version__
from devices.agent.backup import stable_id


@dataclass(frozen=True)
class ProtectedFolder:
    path: Path
    item_id: str
    name: str


@dataclass(frozen=True)
class LocalVault:
    path: Path
    vault_id: str
    name: str


def protected_folders(paths: list[Path]) -> list[ProtectedFolder]:
    """Return one files-and-folders protected item per distinct path, with an id stable across runs."""
    folders: dict[str, ProtectedFolder] = {}
    for path in paths:
        absolute = path.expanduser().absolute()
        item_id = stable_id("files", absolute)
        folders.setdefault(item_id, ProtectedFolder(absolute, item_id, str(absolute)[:200]))
    return list(folders.values())


def local_vault(path: Path | None) -> LocalVault | None:
    if path is None:
        return None
    absolute = path.expanduser().absolute()
    return LocalVault(absolute, stable_id("local", absolute), str(absolute)[:200])


def local_timezone() -> str:
    """Return the machine's time zone name, as well as the platform lets us tell (best effort)."""
    with contextlib.suppress(OSError):
        name = Path("/etc/timezone").read_text().strip()
        if name:
            return name[:64]
    with contextlib.suppress(OSError):
        target = str(Path("/etc/localtime").readlink())
        if "zoneinfo/" in target:
            return target.split("zoneinfo/", 1)[1][:64]
    return time.tzname[1 if time.localtime().tm_isdst > 0 else 0][:64]


def inventory(name: str) -> dict[str, str]:
    """Return what the device tells the portal about itself at registration and in `hello`."""
    return {
        "name": (name or socket.gethostname())[:200],
        "os": f"{platform.system()} {platform.release()}".strip()[:64],
        "arch": platform.machine()[:32],
        "client_version": __version__,
        "timezone": local_timezone(),
    }
