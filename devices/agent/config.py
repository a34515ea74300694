"""The agent's state file: its device id, its device token and the ids of the commands it has run.

The file is written whole (to a temporary file, then renamed) and readable by its owner only,
because the token lets anyone who holds it act as this device. The account password and its keys
are never written here: L is derived again at every start, R never leaves memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from devices import keys

STATE_FILE = "state.json"
EXECUTED_COMMANDS_KEPT = 1000

logger = logging.getLogger("devices.agent")


class AgentState:
    """The agent's persistent state in one JSON file inside `directory`."""

    def __init__(self, directory: Path, data: dict[str, Any]) -> None:
        self.directory = directory
        self.device_id: str = data["device_id"]
        self.token: str = data.get("token", "")
        self.server: str = data.get("server", "")
        self.tenant: str = data.get("tenant", "")
        self.username: str = data.get("username", "")
        self._executed: list[str] = [str(command_id) for command_id in data.get("executed_commands", [])]
        self._executed_set = set(self._executed)
        self.forgotten = False

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE

    @classmethod
    def load(cls, directory: Path, *, server: str, tenant: str, username: str) -> AgentState:
        """Read the state of `directory`, or start a fresh one (a new device id) if there is none.

        State written for another portal, tenant or account is set aside: its token would be refused,
        and its device id may belong to another account of the tenant.
        """
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / STATE_FILE
        identity = {"server": server.rstrip("/"), "tenant": tenant, "username": keys.normalise_username(username)}
        data: dict[str, Any] | None = None
        if path.exists():
            try:
                data = json.loads(path.read_text())
                if not isinstance(data, dict) or not isinstance(data.get("device_id"), str):
                    raise ValueError("no device id")
            except ValueError as error:
                aside = path.with_name(STATE_FILE + ".unreadable")
                path.replace(aside)
                logger.warning("The state file was unreadable (%s); kept it as %s and started afresh.", error, aside)
                data = None
        if data is not None and any(data.get(key) != value for key, value in identity.items()):
            logger.warning("The state file belongs to another portal, tenant or account; starting afresh.")
            data = None
        state = cls(directory, data or {"device_id": uuid.uuid4().hex, **identity})
        if data is None:
            state.save()
        return state

    def save(self) -> None:
        """Write the state atomically with mode 0600 (nothing is written after `forget`)."""
        if self.forgotten:
            return
        data = {
            "device_id": self.device_id,
            "token": self.token,
            "server": self.server,
            "tenant": self.tenant,
            "username": self.username,
            "executed_commands": self._executed,
        }
        temporary = self.directory / f".{STATE_FILE}.{uuid.uuid4().hex}.tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as output:
                json.dump(data, output, indent=2)
                output.flush()
                os.fsync(output.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise

    def set_token(self, token: str) -> None:
        self.token = token
        self.save()

    def has_executed(self, command_id: str) -> bool:
        return command_id in self._executed_set

    def mark_executed(self, command_id: str) -> None:
        """Record a command id before running it, so that it runs at most once, even across restarts."""
        if command_id in self._executed_set:
            return
        self._executed.append(command_id)
        self._executed_set.add(command_id)
        if len(self._executed) > EXECUTED_COMMANDS_KEPT:
            for old in self._executed[:-EXECUTED_COMMANDS_KEPT]:
                self._executed_set.discard(old)
            self._executed = self._executed[-EXECUTED_COMMANDS_KEPT:]
        self.save()

    def forget(self, *, remove_directory: bool) -> None:
        """Delete the token and the state (and the whole state folder if asked): the uninstall command."""
        self.forgotten = True
        self.token = ""
        self.path.unlink(missing_ok=True)
        if not remove_directory:
            return
        # A remote command must not be able to wipe a folder the agent did not create: if someone
        # pointed --state-dir at a folder holding other files, only the agent's own files go.
        own = {STATE_FILE, STATE_FILE + ".unreadable"}
        others = [entry.name for entry in self.directory.iterdir() if entry.name not in own]
        if others:
            (self.directory / (STATE_FILE + ".unreadable")).unlink(missing_ok=True)
            logger.warning("Kept %s: it holds files the agent did not write.", self.directory)
            return
        shutil.rmtree(self.directory, ignore_errors=True)
