"""Encrypted backup and restore end to end: a real reference agent, a real portal, an admin's API key.

An admin runs a backup through the REST API while the agent is connected; the folder changes and a
second backup deduplicates; a restore matches byte for byte; the vault holds no plaintext. Then the
same through damage (a flipped bit: the restore fails and names the object), key rotation, a
password change made on the device, and crypto-shredding (nobody can restore any more).

The portal runs on the embedded default (SQLite, in-memory channel layer): the API and the device's
websocket are served by the same process, so commands reach the live agent at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets

from devices.agent.backup import stable_id
from tests.live import REPO, LivePortal, live_portal, wait_for

PASSWORD = "e2e-account-password"
NEW_PASSWORD = "e2e-account-password-2"
MARKER = b"E2E-PLAINTEXT-MARKER-91c4"

SEED = """
from django.contrib.auth import get_user_model
from django.contrib.auth import SESSION_KEY, BACKEND_SESSION_KEY, HASH_SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from devices import services as device_services
from tenants import services
from tenants.audit import SYSTEM
from tenants.models import Membership, Tenant

tenant = Tenant.objects.create(slug="acme", name="Acme")
owner = get_user_model().objects.create_user("acme-owner", "owner@acme.example", "owner-password-1")
Membership.objects.create(tenant=tenant, user=owner, role="owner")
key = services.api_key_create(actor=SYSTEM, tenant=tenant, user=owner, name="e2e").raw_key
for username in ("alice", "bob"):
    device_services.account_create(actor=SYSTEM, tenant=tenant, username=username, password=arguments["password"])
session = SessionStore()
session[SESSION_KEY] = str(owner.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = owner.get_session_auth_hash()
session.create()
print(json.dumps({"api_key": key, "session": session.session_key}))
"""

SHRED = """
from devices import services
from devices.models import BackupAccount
from tenants.audit import SYSTEM
account = BackupAccount.objects.get(username=arguments["username"])
services.account_secrets_shred(account=account, actor=SYSTEM)
print(json.dumps(True))
"""


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePortal]:
    with live_portal(
        tmp_path_factory.mktemp("portal"), use_postgres=False, seed=SEED, seed_arguments={"password": PASSWORD}
    ) as live:
        yield live


@dataclass
class Admin:
    """The tenant's owner, through the REST API with an API key."""

    portal: LivePortal

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(  # noqa: S310 - our own server
            self.portal.url + "/api/v1/t/acme/" + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.portal.seeded['api_key']}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def run(self, device_pk: int, kind: str, timeout: float = 120, **parameters: Any) -> dict[str, Any]:
        """Issue a command and return it once the device reported its end."""
        status, body = self.api("POST", f"devices/{device_pk}/commands/", {"kind": kind, "parameters": parameters})
        assert status == 202, body

        def finished() -> dict[str, Any] | None:
            _, command = self.api("GET", f"commands/{body['id']}/")
            return command if command["status"] in ("succeeded", "failed", "cancelled", "expired") else None

        return wait_for(finished, timeout=timeout, what=f"the {kind} command to finish")

    def job(self, job_id: str, device_pk: int) -> dict[str, Any]:
        _, jobs = self.api("GET", f"devices/{device_pk}/jobs/")
        (job,) = [job for job in jobs["results"] if job["job_id"] == job_id]
        return job


@dataclass
class Agent:
    portal: LivePortal
    root: Path
    username: str
    process: subprocess.Popen | None = None

    @property
    def documents(self) -> Path:
        return self.root / "documents"

    @property
    def vault(self) -> Path:
        return self.root / "vault"

    def start(self, *, new_password: bool = False, password: str = PASSWORD) -> None:
        env = {**self.portal.env, "AGENT_PASSWORD": password, "AGENT_NEW_PASSWORD": NEW_PASSWORD}
        argv = [
            sys.executable, "-m", "devices.agent", "--server", self.portal.url, "--tenant", "acme",
            "--username", self.username, "--password-env", "AGENT_PASSWORD", "--state-dir", str(self.root / "state"),
            "--protect", str(self.documents), "--vault-dir", str(self.vault), "--quiet",
            "--progress-interval", "0.05",  # so that even a fast machine reports progress mid-job
        ]  # fmt: skip
        if new_password:
            argv += ["--new-password-env", "AGENT_NEW_PASSWORD"]
        with open(self.root / "agent.log", "a") as log:
            self.process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)
        self.process = None

    @property
    def device_id(self) -> str:
        return json.loads((self.root / "state" / "state.json").read_text())["device_id"]

    def parameters(self) -> dict[str, str]:
        return {"protected_item_id": stable_id("files", self.documents), "vault_id": stable_id("local", self.vault)}


def wait_reported(admin: Admin, agent: Agent) -> int:
    """Return the device's pk once it is live and has reported its protected item and vault."""

    def reported() -> int | None:
        if not (agent.root / "state" / "state.json").exists():
            return None
        _, devices = admin.api("GET", "devices/?page_size=100")
        device = next((d for d in devices["results"] if d["device_id"] == agent.device_id and d["is_live"]), None)
        if device is None:
            return None
        _, detail = admin.api("GET", f"devices/{device['id']}/")
        _, vaults = admin.api("GET", f"accounts/{device['account']}/vaults/")
        items = {item["item_id"] for item in detail["protected_items"]}
        known = agent.parameters()["protected_item_id"] in items and agent.parameters()["vault_id"] in {
            vault["vault_id"] for vault in vaults["results"]
        }
        return device["id"] if known else None

    return wait_for(reported, timeout=30, what="the device's status report")


@pytest.fixture
def make_agent(portal: LivePortal, tmp_path: Path):
    agents: list[Agent] = []

    def make(username: str) -> Agent:
        agent = Agent(portal=portal, root=tmp_path / username, username=username)
        agent.documents.mkdir(parents=True)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.stop()


def write_documents(folder: Path) -> None:
    rng = random.Random(5)
    big = rng.randbytes(64 * 1024 * 1024)  # long enough for the backup to report progress on the way
    files = {
        "notes.txt": b"meeting notes " + MARKER + b"\n",
        "invoices/2024/march.pdf": rng.randbytes(1_500_000) + MARKER,
        "invoices/2024/march copy.pdf": None,  # the same content again
        "photos/holiday.raw": big,
        "empty.csv": b"",
        "deep/er/still/é.txt": b"unicode " + MARKER,
    }
    for relative, content in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if content is not None else (folder / "invoices/2024/march.pdf").read_bytes())
    (folder / "an empty folder").mkdir()


def tree(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def vault_bytes(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in folder.rglob("*") if path.is_file())


class FleetSocket:
    """The fleet page's websocket, as a browser holds it: collects the live events in a thread."""

    def __init__(self, portal: LivePortal) -> None:
        self.portal, self.events, self._stop = portal, [], threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._watch()), daemon=True)
        self._open = threading.Event()

    async def _watch(self) -> None:
        url = self.portal.url.replace("http://", "ws://") + "/ws/t/acme/fleet/"
        headers = {"Cookie": f"sessionid={self.portal.seeded['session']}", "Origin": self.portal.url}
        async with websockets.connect(url, additional_headers=headers) as socket:
            self._open.set()
            while not self._stop.is_set():
                try:
                    self.events.append(json.loads(await asyncio.wait_for(socket.recv(), 0.2)))
                except TimeoutError:
                    continue

    def __enter__(self) -> FleetSocket:
        self._thread.start()
        assert self._open.wait(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)


def test_it_backs_up_dedups_and_restores_byte_for_byte_through_an_admins_commands(portal, make_agent, tmp_path):
    admin = Admin(portal)
    agent = make_agent("alice")
    write_documents(agent.documents)
    agent.start()
    device_pk = wait_reported(admin, agent)

    with FleetSocket(portal) as fleet:
        first = admin.run(device_pk, "run_backup", **agent.parameters())
        assert first["status"] == "succeeded", first
        wait_for(lambda: any(e.get("kind") == "job" and e["status"] == "succeeded" for e in fleet.events), timeout=10)
    job = admin.job(first["result"]["job_id"], device_pk)
    read = sum(len(content) for content in tree(agent.documents).values())
    assert (job["status"], job["files_done"], job["files_total"], job["bytes_read"]) == ("succeeded", 6, 6, read)
    assert job["snapshot_id"] == first["result"]["snapshot_id"] and job["chunks_new"] < job["chunks_total"]
    assert job["dedup_ratio"] > 1  # the copy of march.pdf was stored once
    # Progress reached the admin's browser live, while the job ran, with the new counters.
    progress = [e for e in fleet.events if e.get("kind") == "job" and e["status"] == "running" and e["bytes_read"]]
    assert progress and all("bytes_new" in event and "dedup_ratio" in event for event in progress)
    # The portal knows the vault's usage (reported in the job's counters and the status after it) and key id.
    stored = sum(path.stat().st_size for path in agent.vault.rglob("*") if path.is_file())
    _, account = admin.api("GET", "accounts/?search=alice")
    account_pk = account["results"][0]["id"]

    def vault_row() -> dict[str, Any] | None:
        _, vaults = admin.api("GET", f"accounts/{account_pk}/vaults/")
        row = vaults["results"][0]
        return row if row["bytes_used"] == stored and row["key_id"] else None

    row = wait_for(vault_row, what="the vault's usage and key id")
    assert row["encryption_format"] == 1 and (agent.vault / "keys" / row["key_id"]).exists()
    assert MARKER not in vault_bytes(agent.vault)

    # Change the folder; the second backup stores only what changed.
    (agent.documents / "notes.txt").write_bytes(b"changed notes " + MARKER)
    (agent.documents / "invoices/2024/april.pdf").write_bytes(os.urandom(200_000))
    (agent.documents / "empty.csv").unlink()
    second = admin.run(device_pk, "run_backup", **agent.parameters())
    assert second["status"] == "succeeded", second
    dedup = admin.job(second["result"]["job_id"], device_pk)
    assert dedup["chunks_new"] == 2 and dedup["bytes_new"] == len(b"changed notes " + MARKER) + 200_000
    assert dedup["bytes_uploaded"] < 250_000 < 64 * 1024 * 1024 < dedup["bytes_read"] and dedup["dedup_ratio"] > 100
    assert MARKER not in vault_bytes(agent.vault)

    listed = admin.run(device_pk, "list_snapshots", vault_id=agent.parameters()["vault_id"])
    assert [snapshot["snapshot_id"] for snapshot in listed["result"]["snapshots"]] == [
        second["result"]["snapshot_id"],
        first["result"]["snapshot_id"],
    ]

    restored = admin.run(
        device_pk,
        "restore",
        vault_id=agent.parameters()["vault_id"],
        protected_item_id=agent.parameters()["protected_item_id"],
        target=str(tmp_path / "restored"),
    )
    assert restored["status"] == "succeeded", restored
    assert tree(tmp_path / "restored") == tree(agent.documents)
    assert (tmp_path / "restored" / "an empty folder").is_dir()
    older = admin.run(
        device_pk,
        "restore",
        vault_id=agent.parameters()["vault_id"],
        snapshot_id=first["result"]["snapshot_id"],
        target=str(tmp_path / "restored-first"),
    )
    assert older["status"] == "succeeded" and (tmp_path / "restored-first" / "empty.csv").read_bytes() == b""

    # A flipped bit in stored chunks (the small ones: notes.txt, the first file restored, has one of
    # them): the restore fails, names the chunk, and writes nothing wrong.
    small = {path: path.read_bytes() for path in agent.vault.glob("chunks/*/*") if path.stat().st_size < 1000}
    for path, original in small.items():
        path.write_bytes(original[:40] + bytes([original[40] ^ 0x04]) + original[41:])
    damaged = admin.run(
        device_pk,
        "restore",
        vault_id=agent.parameters()["vault_id"],
        protected_item_id=agent.parameters()["protected_item_id"],
        target=str(tmp_path / "damaged"),
    )
    assert damaged["status"] == "failed" and "failed verification" in damaged["error"]
    assert any(f"chunks/{path.parent.name}/{path.name}" in damaged["error"] for path in small)
    assert not (tmp_path / "damaged" / "notes.txt").exists()
    assert all(tree(agent.documents)[path] == data for path, data in tree(tmp_path / "damaged").items())
    for path, original in small.items():
        path.write_bytes(original)

    # Rotating E re-wraps A; the data is untouched and still restores.
    chunks_before = {path: path.read_bytes() for path in agent.vault.glob("chunks/*/*")}
    rotated = admin.run(device_pk, "rotate_vault_key", vault_id=agent.parameters()["vault_id"])
    assert rotated["status"] == "succeeded", rotated
    assert [path.name for path in (agent.vault / "keys").iterdir()] == [rotated["result"]["key_id"]]
    assert {path: path.read_bytes() for path in agent.vault.glob("chunks/*/*")} == chunks_before
    again = admin.run(
        device_pk,
        "restore",
        vault_id=agent.parameters()["vault_id"],
        protected_item_id=agent.parameters()["protected_item_id"],
        target=str(tmp_path / "after-rotation"),
    )
    assert again["status"] == "succeeded" and tree(tmp_path / "after-rotation") == tree(agent.documents)

    # Retention: keep the newest snapshot only; the chunks only the first one used are deleted.
    retained = admin.run(device_pk, "apply_retention", keep_snapshots=1, **agent.parameters())
    assert retained["status"] == "succeeded", retained
    assert retained["result"]["snapshots_deleted"] == 1 and retained["result"]["chunks_deleted"] == 1  # old notes
    assert [path.name for path in (agent.vault / "snapshots").iterdir()] == [second["result"]["snapshot_id"]]

    # Crypto-shredding: the profile secrets are deleted; nobody can restore any more.
    assert portal.django(SHRED, username="alice") is True
    shredded = admin.run(
        device_pk,
        "restore",
        vault_id=agent.parameters()["vault_id"],
        protected_item_id=agent.parameters()["protected_item_id"],
        target=str(tmp_path / "after-shredding"),
    )
    assert shredded["status"] == "failed" and "cannot be decrypted by anyone" in shredded["error"]
    assert not (tmp_path / "after-shredding").exists()
    refused = admin.run(device_pk, "run_backup", **agent.parameters())
    assert refused["status"] == "failed" and "cannot be decrypted by anyone" in refused["error"]
    assert "Traceback" not in (agent.root / "agent.log").read_text()


def test_it_changes_the_password_on_the_device_and_keeps_the_vault_readable(portal, make_agent, tmp_path):
    admin = Admin(portal)
    agent = make_agent("bob")
    (agent.documents / "letter.txt").write_bytes(b"dear bob " + MARKER)
    agent.start()
    device_pk = wait_reported(admin, agent)
    assert admin.run(device_pk, "run_backup", **agent.parameters())["status"] == "succeeded"
    agent.stop()

    agent.start(new_password=True)  # re-seals the profile under the new password's R, then carries on
    wait_for(lambda: "Changed the account's password" in (agent.root / "agent.log").read_text(), timeout=30)
    device_pk = wait_reported(admin, agent)
    restored = admin.run(
        device_pk,
        "restore",
        vault_id=agent.parameters()["vault_id"],
        protected_item_id=agent.parameters()["protected_item_id"],
        target=str(tmp_path / "restored"),
    )
    assert restored["status"] == "succeeded", restored
    assert tree(tmp_path / "restored") == tree(agent.documents)
    agent.stop()

    # The old password no longer logs in (a fresh device registering with it is refused)...
    stranger = Agent(portal=portal, root=tmp_path / "stranger", username="bob")
    stranger.documents.mkdir(parents=True)
    stranger.start(password=PASSWORD)
    assert stranger.process is not None and stranger.process.wait(timeout=30) == 1
    assert "refused the credentials" in (stranger.root / "agent.log").read_text()
    # ...and the new one opens the same vault from the restarted device.
    agent.start(password=NEW_PASSWORD)
    device_pk = wait_reported(admin, agent)
    listed = admin.run(device_pk, "list_snapshots", vault_id=agent.parameters()["vault_id"])
    assert listed["status"] == "succeeded" and len(listed["result"]["snapshots"]) == 1
