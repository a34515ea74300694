"""The reference agent against a real portal: uvicorn in a subprocess, the agent in another.

The portal runs on the embedded default (a fresh SQLite file, the in-memory channel layer), so a
command issued from a script in another process cannot be pushed to the live connection. Commands
are therefore queued while the agent is stopped and collected when it connects, which is the
documented fallback (a device receives queued commands on `hello`).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devices.agent import __version__
from devices.agent.backup import stable_id
from tests.live import REPO, LivePortal, live_portal, wait_for

PASSWORD = "correct-horse-battery-staple"

# Imports for the snippets below, which run inside the portal (tests/live.py).
IMPORTS = """
from devices import services
from devices.models import Command, Device
from tenants import audit
from tenants.models import Tenant
"""

SEED = """
tenant = Tenant.objects.create(slug="demo", name="Demo Backup")
services.account_create(actor=audit.SYSTEM, tenant=tenant, username="alice", password=arguments["password"])
print(json.dumps({"tenant": tenant.slug}))
"""

ISSUE = """
device = Device.objects.get(device_id=arguments["device_id"])
issued = []
for kind, parameters in arguments["commands"]:
    command = services.command_issue(actor=audit.SYSTEM, device=device, kind=kind, parameters=parameters)
    issued.append(command.command_id.hex)
print(json.dumps(issued))
"""

REQUEUE = """
print(Command.objects.filter(command_id=arguments["command_id"]).update(status="queued", finished_at=None))
"""

ROTATE = """
services.device_token_rotate(device=Device.objects.get(device_id=arguments["device_id"]))
print(json.dumps(True))
"""


class Portal(LivePortal):
    """The live portal, with the snippets' imports and read-only SQL on its SQLite file."""

    def django(self, script: str, **arguments: Any) -> Any:
        return super().django(IMPORTS + script, **arguments)

    def rows(self, sql: str, *parameters: Any) -> list[tuple]:
        with sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=10) as connection:
            return connection.execute(sql, parameters).fetchall()


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    # The embedded default (SQLite, in-memory layer), and a short heartbeat interval to show that the
    # agent keeps to it while busy.
    with live_portal(
        tmp_path_factory.mktemp("portal"),
        use_postgres=False,
        extra_env={"DEVICE_HEARTBEAT_INTERVAL": "2"},
        seed=IMPORTS + SEED,
        seed_arguments={"password": PASSWORD},
        portal_class=Portal,
    ) as live:
        yield live  # type: ignore[misc]


@dataclass
class AgentRun:
    """One agent process; its folders survive restarts, so a restarted agent is the same device."""

    portal: Portal
    root: Path
    extra: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None
    runs: int = 0
    _stderr: Any = None

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def log(self) -> Path:
        return self.root / "agent.log"

    @property
    def state(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "state.json").read_text())

    @property
    def device_id(self) -> str:
        return self.state["device_id"]

    def start(self) -> None:
        self.runs += 1
        env = {**self.portal.env, "AGENT_PASSWORD": PASSWORD}
        self._stderr = self.log.open("a")
        self._stderr.write(f"--- run {self.runs}\n")
        self._stderr.flush()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devices.agent",
                "--server",
                self.portal.url,
                "--tenant",
                "demo",
                "--username",
                "alice",
                "--password-env",
                "AGENT_PASSWORD",
                "--state-dir",
                str(self.state_dir),
                "--protect",
                str(self.root / "documents"),
                "--vault-dir",
                str(self.root / "vault"),
                *self.extra,
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=15)
        self.process = None
        self._stderr.close()
        return code

    def issue(self, *commands: tuple[str, dict[str, Any]]) -> list[str]:
        """Queue commands for this device the way the portal's services do; return their ids (hex)."""
        return self.portal.django(ISSUE, device_id=self.device_id, commands=commands)

    def backup_parameters(self) -> dict[str, str]:
        return {
            "protected_item_id": stable_id("files", self.root / "documents"),
            "vault_id": stable_id("local", self.root / "vault"),
        }

    def device(self) -> tuple | None:
        rows = self.portal.rows(
            "SELECT id, is_live, name, client_version, consents FROM devices_device WHERE device_id = ?",
            self.device_id,
        )
        return rows[0] if rows else None

    def wait_until_live(self, live: bool = True) -> tuple:
        def check() -> tuple | None:
            if not (self.state_dir / "state.json").exists():
                return None
            device = self.device()
            return device if device is not None and bool(device[1]) == live else None

        return wait_for(check, what=f"the device to be {'live' if live else 'offline'}")

    def commands(self) -> dict[str, tuple]:
        rows = self.portal.rows(
            "SELECT c.command_id, c.kind, c.status, c.result, c.error FROM devices_command c "
            "JOIN devices_device d ON d.id = c.device_id WHERE d.device_id = ?",
            self.device_id,
        )
        return {row[0].replace("-", ""): row[1:] for row in rows}

    def wait_for_commands(self, ids: list[str], statuses: set[str]) -> dict[str, tuple]:
        return wait_for(
            lambda: (found := self.commands()) and all(found[id_][1] in statuses for id_ in ids) and found,
            what=f"commands to reach {statuses}",
        )


@pytest.fixture
def agent(portal: Portal, tmp_path: Path) -> Iterator[AgentRun]:
    documents = tmp_path / "documents"
    (documents / "invoices" / "2024").mkdir(parents=True)
    (documents / "notes.txt").write_text("the first file\n")
    (documents / "invoices" / "2024" / "march.pdf").write_bytes(os.urandom(1_500_000))
    (documents / "invoices" / "empty.csv").write_bytes(b"")
    (tmp_path / "vault").mkdir()
    run = AgentRun(portal=portal, root=tmp_path)
    yield run
    if run.process is not None:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()
        run._stderr.close()


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_it_registers_reports_and_runs_queued_commands(portal, agent):
    agent.extra = ["--name", "reception-pc"]
    agent.start()
    agent.wait_until_live()
    # The device is live from the handshake on; its hello (inventory, consents) is stored a moment later.
    device_pk, _, name, client_version, consents = wait_for(
        lambda: (row := agent.device()) and json.loads(row[4]) and row, what="the device's hello"
    )
    assert (name, client_version, json.loads(consents)) == ("reception-pc", __version__, {"allow_browse": False})
    state_file = agent.state_dir / "state.json"
    assert state_file.stat().st_mode & 0o777 == 0o600
    assert PASSWORD not in state_file.read_text() and len(agent.state["token"]) == 43
    documents = _tree(agent.root / "documents")
    total = sum(len(content) for content in documents.values())
    items = wait_for(
        lambda: portal.rows(
            "SELECT item_id, engine, size_bytes FROM devices_protecteditem WHERE device_id = ?", device_pk
        )
    )
    assert items[0][1:] == ("files", total)
    assert agent.stop() == 0
    agent.wait_until_live(False)

    ping, backup = agent.issue(("ping", {}), ("run_backup", agent.backup_parameters()))
    started = time.monotonic()
    agent.start()
    found = agent.wait_for_commands([ping, backup], {"succeeded", "failed", "cancelled"})
    assert found[ping][1] == "succeeded" and "pong" in json.loads(found[ping][2])
    assert found[backup][1] == "succeeded", found[backup]
    job_id = json.loads(found[backup][2])["job_id"]
    ((job_pk, status, percent, files_done, files_total, bytes_read, bytes_uploaded, item_id),) = portal.rows(
        "SELECT id, status, progress_percent, files_done, files_total, bytes_read, bytes_uploaded, protected_item_id "
        "FROM devices_job WHERE job_id = ?",
        uuid.UUID(job_id).hex,
    )
    assert (status, percent, files_done, files_total) == ("succeeded", 100, 3, 3)
    # Sealed chunks and a manifest: a little more than was read (tests/devices/test_backup_e2e.py has more).
    assert bytes_read == total < bytes_uploaded and item_id == items[0][0]
    messages = [row[0] for row in portal.rows("SELECT message FROM devices_joblogline WHERE job_id = ?", job_pk)]
    assert messages[0].startswith("Backing up") and messages[-1].startswith("Backed up 3 of 3 files")

    (snapshot,) = (agent.root / "vault" / "snapshots").iterdir()
    assert snapshot.name == json.loads(found[backup][2])["snapshot_id"]
    stored = sum(path.stat().st_size for path in (agent.root / "vault").rglob("*") if path.is_file())
    vault_id = stable_id("local", agent.root / "vault")
    used = wait_for(
        lambda: portal.rows(
            "SELECT bytes_used FROM devices_storagevault WHERE vault_id = ? AND bytes_used > 0", vault_id
        ),
        what="the vault's usage after the backup",
    )
    assert used == [(stored,)]

    # The portal here expects a heartbeat every 2 s and closes (4008) after three missed ones: a
    # connection that outlives that, through a backup, shows the agent keeps to the interval.
    time.sleep(max(0.0, started + 8.5 - time.monotonic()))
    agent.wait_until_live()
    assert agent.stop() == 0
    last_run = agent.log.read_text().rsplit("--- run", 1)[1]
    assert last_run.count("Connected to") == 1 and "close code" not in last_run
    assert "Traceback" not in agent.log.read_text()


def test_it_runs_a_command_delivered_twice_only_once(portal, agent):
    agent.start()
    agent.wait_until_live()
    wait_for(
        lambda: portal.rows(
            "SELECT 1 FROM devices_protecteditem p JOIN devices_device d ON d.id = p.device_id WHERE d.device_id = ?",
            agent.device_id,
        )
    )
    assert agent.stop() == 0
    (backup,) = agent.issue(("run_backup", agent.backup_parameters()))
    agent.start()
    assert agent.wait_for_commands([backup], {"succeeded"})[backup][1] == "succeeded"
    assert agent.stop() == 0

    # As if the acknowledgement had been lost: the portal sends the command again on the next hello.
    assert portal.django(REQUEUE, command_id=backup) == 1
    agent.start()
    agent.wait_for_commands([backup], {"acknowledged"})
    assert agent.stop() == 0
    assert len(list((agent.root / "vault" / "snapshots").iterdir())) == 1  # one snapshot only
    assert portal.rows(
        "SELECT COUNT(*) FROM devices_job WHERE command_id = (SELECT id FROM devices_command WHERE command_id = ?)",
        backup,
    ) == [(1,)]
    assert "was already executed; acknowledged it again" in agent.log.read_text()


def test_it_registers_again_when_its_token_stops_working_and_reconnects_after_a_drop(portal, agent):
    agent.start()
    agent.wait_until_live()
    old_token = agent.state["token"]
    assert agent.stop() == 0
    portal.django(ROTATE, device_id=agent.device_id)
    (drop,) = agent.issue(("drop_connection", {}))
    agent.start()
    assert agent.wait_for_commands([drop], {"succeeded"})[drop][1] == "succeeded"
    wait_for(lambda: agent.log.read_text().count("Connected to") >= 3, what="the reconnection after the drop")
    agent.wait_until_live()
    assert agent.state["token"] != old_token
    assert agent.stop() == 0
    log = agent.log.read_text()
    assert "no longer accepts this device's token (close code 4001)" in log and "Reconnecting in" in log


def test_it_forgets_everything_and_exits_on_uninstall(portal, agent):
    agent.start()
    agent.wait_until_live()
    assert agent.stop() == 0
    (uninstall,) = agent.issue(("uninstall", {"remove_config": True}))
    agent.start()
    assert agent.process.wait(timeout=20) == 0
    assert not agent.state_dir.exists()
    ((status,),) = portal.rows("SELECT status FROM devices_command WHERE command_id = ?", uninstall)
    assert status == "succeeded"
