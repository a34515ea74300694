"""Commands that need neither the connection nor a job: ping, browse_files, collect_logs, update_software.

Each returns an Outcome, which the client sends back as `command_result`. Results are trimmed so
that the frame stays under the protocol's 64 KiB limit (the portal closes on larger frames).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devices import protocol
from devices.agent import __version__

BROWSE_ENTRIES_MAX = 1000
COLLECT_LOGS_DEFAULT = 200
COLLECT_LOGS_MAX = 1000
# Room left in a frame for the envelope around a result (type, command_id, status, error).
FRAME_BUDGET = protocol.MAX_FRAME_BYTES - 1024
BROWSE_REFUSED = "browsing is not allowed on this device"


@dataclass
class Outcome:
    status: str  # succeeded, failed or cancelled
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def frame(self, command_id: str) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "type": "command_result",
            "command_id": command_id,
            "status": self.status,
            "result": self.result,
        }
        if self.error:
            frame["error"] = self.error[:500]
        return frame


def failed(error: str) -> Outcome:
    return Outcome("failed", error=error)


def frame_size(value: Any) -> int:
    """Return the size in bytes of `value` as the agent sends it (ASCII JSON)."""
    return len(json.dumps(value, separators=(",", ":")))


def fit_list(result: dict[str, Any], key: str, *, keep: str) -> dict[str, Any]:
    """Drop entries of result[key] (from the end for keep="head", the start for "tail") until it fits.

    Sets result["truncated"] when anything was dropped.
    """
    entries = result[key]
    if frame_size(result) <= FRAME_BUDGET:
        return result
    low, high = 0, len(entries)
    while low < high:  # the largest count that fits
        middle = (low + high + 1) // 2
        kept = entries[:middle] if keep == "head" else entries[len(entries) - middle :]
        if frame_size({**result, key: kept, "truncated": True}) <= FRAME_BUDGET:
            low = middle
        else:
            high = middle - 1
    kept = entries[:low] if keep == "head" else entries[len(entries) - low :]
    return {**result, key: kept, "truncated": True}


def ping() -> Outcome:
    return Outcome("succeeded", {"pong": datetime.now(UTC).isoformat()})


def browse_files(parameters: dict[str, Any], *, allowed: bool) -> Outcome:
    """List one directory (name, type, size), if the person running the agent allowed browsing."""
    if not allowed:
        return failed(BROWSE_REFUSED)
    path = parameters.get("path")
    if not isinstance(path, str) or not path:
        return failed("'path' must name a directory")
    folder = Path(path).expanduser()
    try:
        with os.scandir(folder) as found:
            listed = sorted(found, key=lambda entry: entry.name)
            entries = [_entry(entry) for entry in listed[:BROWSE_ENTRIES_MAX]]
    except FileNotFoundError:
        return failed(f"no such directory: {path}")
    except NotADirectoryError:
        return failed(f"not a directory: {path}")
    except PermissionError:
        return failed(f"permission denied: {path}")
    except OSError as error:
        return failed(f"cannot list {path}: {error.strerror or error}")
    result: dict[str, Any] = {"path": str(folder), "entries": entries}
    if len(listed) > BROWSE_ENTRIES_MAX:
        result["truncated"] = True
    return Outcome("succeeded", fit_list(result, "entries", keep="head"))


def _entry(entry: os.DirEntry[str]) -> dict[str, Any]:
    try:
        if entry.is_symlink():
            return {"name": entry.name, "type": "symlink", "size": 0}
        if entry.is_dir():
            return {"name": entry.name, "type": "directory", "size": 0}
        if entry.is_file():
            return {"name": entry.name, "type": "file", "size": entry.stat().st_size}
    except OSError:
        pass
    return {"name": entry.name, "type": "other", "size": 0}


def collect_logs(parameters: dict[str, Any], recent_lines: list[str]) -> Outcome:
    """Return the agent's most recent log lines (the ring buffer already holds them)."""
    count = parameters.get("lines", COLLECT_LOGS_DEFAULT)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return failed("'lines' must be a whole number")
    lines = recent_lines[-min(count, COLLECT_LOGS_MAX) :] if count else []
    return Outcome("succeeded", fit_list({"lines": lines}, "lines", keep="tail"))


def update_software(parameters: dict[str, Any]) -> Outcome:
    """Report the running version. There is no update channel yet, so no update is ever available."""
    result: dict[str, Any] = {
        "current_version": __version__,
        "update_available": False,
        "message": "This agent has no update channel yet; install new versions by hand.",
    }
    if isinstance(parameters.get("version"), str):
        result["requested_version"] = parameters["version"]
    return Outcome("succeeded", result)
