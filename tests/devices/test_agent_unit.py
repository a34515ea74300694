"""The reference agent's parts, without a portal: backoff, state file, backup job, commands."""

from __future__ import annotations

import asyncio
import json
import os
import random
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from devices import protocol
from devices.agent import commands, crypto
from devices.agent.backup import BackupJob, stable_id
from devices.agent.client import Agent, AgentOptions
from devices.agent.config import EXECUTED_COMMANDS_KEPT, STATE_FILE, AgentState
from devices.agent.pacing import Backoff
from devices.agent.profile import AccountIdentity, Keyring, ProfileConflict, StoredProfile
from devices.agent.storage import LocalDirectoryStorage
from devices.agent.vault import Vault

SERVER = "https://backup.example.com"


def make_state(directory: Path, **identity: str) -> AgentState:
    return AgentState.load(
        directory,
        server=identity.get("server", SERVER),
        tenant=identity.get("tenant", "acme"),
        username=identity.get("username", "alice"),
    )


def make_tree(root: Path) -> dict[str, bytes]:
    """Write a small tree (nested folders, an empty file, a multi-chunk binary); return path -> content."""
    rng = random.Random(7)
    contents = {
        "readme.txt": b"hello\n",
        "empty.dat": b"",
        "photos/2024/beach.jpg": rng.randbytes(2_500_000),  # more than two 1 MiB chunks
        "photos/2024/notes é.txt": "café\n".encode(),
        "docs/deep/er/still/file.bin": rng.randbytes(70_000),
    }
    for relative, content in contents.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return contents


def make_agent(
    tmp_path: Path,
    *,
    protect: list[Path] | None = None,
    vault: Path | None = None,
    profile_store: MemoryProfile | None = None,
    **options,
) -> Agent:
    return Agent(
        AgentOptions(
            server=SERVER,
            tenant="acme",
            username="alice",
            name="laptop",
            protect=protect or [],
            vault_dir=vault,
            **options,
        ),
        make_state(tmp_path / "state"),
        login_key=b"L" * 24,
        wrapping_key=b"R" * 24,
        profile_store=profile_store or MemoryProfile(),
    )


def outbox(agent: Agent) -> list[dict]:
    return [json.loads(text) for text in agent._outbox]


# --- Backoff --------------------------------------------------------------------------------


class HighestDraw(random.Random):
    """Always draw the top of the range, to watch the ceiling."""

    def uniform(self, low: float, high: float) -> float:
        return high


def test_it_keeps_backoff_delays_within_full_jitter_bounds():
    backoff = Backoff(rng=random.Random(1))
    for attempt in range(12):
        ceiling = min(60.0, 2.0**attempt)
        assert backoff.ceiling() == ceiling
        delay = backoff.next_delay()
        assert 0 <= delay <= ceiling


def test_it_grows_backoff_delays_up_to_a_minute():
    backoff = Backoff(rng=HighestDraw())
    delays = [backoff.next_delay() for _ in range(9)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_it_spreads_reconnections_with_jitter():
    delays = []
    for seed in range(200):
        backoff = Backoff(rng=random.Random(seed))
        backoff.attempt = 6
        delays.append(backoff.next_delay())
    assert min(delays) < 10 and max(delays) > 50  # spread over [0, 60], not clustered at one value


def test_it_resets_backoff_only_after_a_connection_that_lasted_a_minute():
    backoff = Backoff(rng=HighestDraw())
    for _ in range(5):
        backoff.next_delay()
    backoff.connection_ended(59.0)
    assert backoff.ceiling() == 32
    backoff.connection_ended(60.0)
    assert backoff.ceiling() == 1


def test_a_busy_portal_s_retry_after_sets_the_reconnect_delay_and_the_backoff_stays(tmp_path):
    agent = make_agent(tmp_path)
    agent.backoff = Backoff(rng=HighestDraw())
    agent._close_reason = "retry_after=7.0"
    assert agent._reconnect_delay(4013) == 7.5  # the portal's time, and at most half a second more
    assert agent.backoff.attempt == 0
    # Any other close, or a 4013 without a time (an older portal), backs off as before.
    assert agent._reconnect_delay(1006) == 1 and agent.backoff.attempt == 1
    agent._close_reason = ""
    assert agent._reconnect_delay(4013) == 2 and agent.backoff.attempt == 2


def test_it_reads_only_a_well_formed_retry_after():
    from devices import protocol

    assert protocol.retry_after_of(protocol.busy_reason(3.25)) == 3.2
    assert protocol.retry_after_of(protocol.busy_reason(10_000)) == protocol.RETRY_AFTER_MAX_SECONDS
    for reason in ("", "busy", "retry_after=", "retry_after=soon", "retry_after=-1", "wait=3"):
        assert protocol.retry_after_of(reason) is None, reason


# --- State file -----------------------------------------------------------------------------


def test_it_creates_the_state_file_readable_by_its_owner_only(tmp_path):
    state = make_state(tmp_path / "state")
    state.set_token("device-token")
    path = tmp_path / "state" / STATE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    saved = json.loads(path.read_text())
    assert saved["token"] == "device-token"
    assert len(saved["device_id"]) == 32 and int(saved["device_id"], 16) >= 0
    assert [entry.name for entry in (tmp_path / "state").iterdir()] == [STATE_FILE]  # no temporary left


def test_it_keeps_the_device_id_and_token_across_restarts(tmp_path):
    first = make_state(tmp_path / "state")
    first.set_token("device-token")
    again = make_state(tmp_path / "state")
    assert (again.device_id, again.token) == (first.device_id, "device-token")


def test_it_remembers_executed_commands_across_reloads(tmp_path):
    state = make_state(tmp_path / "state")
    command_id = str(uuid.uuid4())
    state.mark_executed(command_id)
    reloaded = make_state(tmp_path / "state")
    assert reloaded.has_executed(command_id)
    assert not reloaded.has_executed(str(uuid.uuid4()))


def test_it_keeps_the_last_thousand_executed_commands(tmp_path):
    state = make_state(tmp_path / "state")
    ids = [f"command-{number}" for number in range(EXECUTED_COMMANDS_KEPT + 5)]
    for command_id in ids:
        state._executed.append(command_id)
        state._executed_set.add(command_id)
    state.mark_executed("the-newest")
    reloaded = make_state(tmp_path / "state")
    assert reloaded.has_executed("the-newest") and reloaded.has_executed(ids[-1])
    assert not reloaded.has_executed(ids[5])
    assert len(json.loads((tmp_path / "state" / STATE_FILE).read_text())["executed_commands"]) == 1000


def test_it_starts_afresh_for_another_account(tmp_path):
    first = make_state(tmp_path / "state")
    first.set_token("device-token")
    other = make_state(tmp_path / "state", username="bob")
    assert other.device_id != first.device_id and other.token == ""


def test_it_never_writes_the_password_or_its_keys(tmp_path):
    agent = make_agent(tmp_path)
    agent.state.set_token("device-token")
    text = (tmp_path / "state" / STATE_FILE).read_text()
    assert (b"L" * 24).hex() not in text and "LLLL" not in text and "RRRR" not in text


def test_it_forgets_the_state_on_uninstall(tmp_path):
    state = make_state(tmp_path / "state")
    state.set_token("device-token")
    state.forget(remove_directory=False)
    assert (tmp_path / "state").is_dir() and not (tmp_path / "state" / STATE_FILE).exists()
    state.mark_executed("after-forgetting")  # nothing is written any more
    assert not (tmp_path / "state" / STATE_FILE).exists()
    again = make_state(tmp_path / "state")
    again.forget(remove_directory=True)
    assert not (tmp_path / "state").exists()


def test_it_keeps_a_state_folder_that_holds_other_files_on_uninstall(tmp_path):
    state = make_state(tmp_path)
    (tmp_path / "mine.txt").write_text("not the agent's")
    state.forget(remove_directory=True)
    assert (tmp_path / "mine.txt").exists() and not (tmp_path / STATE_FILE).exists()


# --- Backup job -----------------------------------------------------------------------------
# The encrypted format, restore, retention and tampering: tests/devices/test_backup_restore.py.


class MemoryProfile:
    """The portal's profile endpoint (the network edge), in memory."""

    def __init__(self) -> None:
        self.version, self.blob = 0, b""

    def fetch(self) -> StoredProfile:
        return StoredProfile(self.version, self.blob)

    def store(self, *, version: int, blob: bytes) -> int:
        if version != self.version:
            raise ProfileConflict
        self.blob, self.version = blob, self.version + 1
        return self.version


def open_vault(folder: Path, profile: MemoryProfile | None = None) -> Vault:
    keyring = Keyring(
        profile or MemoryProfile(), profile_key=crypto.profile_key(b"R" * 24), account=AccountIdentity("acme", "alice")
    )
    return keyring.open_vault(LocalDirectoryStorage(folder), "local-1", create=True)


def run_job(job: BackupJob) -> str:
    job.scan()
    return job.run()


def test_it_backs_a_folder_tree_up_into_one_snapshot(tmp_path):
    contents = make_tree(tmp_path / "source")
    item_id = stable_id("files", tmp_path / "source")
    job = BackupJob(source=tmp_path / "source", vault=open_vault(tmp_path / "vault"), item_id=item_id)
    assert run_job(job) == "succeeded"
    total = sum(len(content) for content in contents.values())
    counters = job.counters.snapshot()
    assert {key: counters[key] for key in ("percent", "files_done", "files_total", "bytes_read")} == {
        "percent": 100.0,
        "files_done": len(contents),
        "files_total": len(contents),
        "bytes_read": total,
    }
    assert counters["bytes_new"] == total and counters["chunks_new"] == counters["chunks_total"] == 6
    assert counters["bytes_uploaded"] > total  # sealed chunks and the manifest
    assert job.vault.snapshot_ids() == [job.snapshot_id]
    manifest = job.vault.read_manifest(job.snapshot_id)
    assert sorted(entry["path"] for entry in manifest["files"]) == sorted(contents)
    assert job.log_lines[-1]["level"] == "info" and "Backed up 5 of 5 files" in job.log_lines[-1]["message"]


def test_it_never_backs_the_vault_up_into_itself(tmp_path):
    make_tree(tmp_path / "source")
    vault_folder = tmp_path / "source" / "vault"
    profile = MemoryProfile()
    first = BackupJob(
        source=tmp_path / "source", vault=open_vault(vault_folder, profile), item_id="files-x", exclude=vault_folder
    )
    assert run_job(first) == "succeeded"
    second = BackupJob(
        source=tmp_path / "source", vault=open_vault(vault_folder, profile), item_id="files-x", exclude=vault_folder
    )
    assert run_job(second) == "succeeded"
    assert second.counters.files_total == first.counters.files_total == 5
    assert len(second.vault.snapshot_ids()) == 2 and second.counters.chunks_new == 0


def test_it_skips_an_unreadable_file_with_a_warning(tmp_path):
    contents = make_tree(tmp_path / "source")
    job = BackupJob(source=tmp_path / "source", vault=open_vault(tmp_path / "vault"), item_id="files-x")
    job.scan()
    (tmp_path / "source" / "readme.txt").unlink()  # gone between listing and reading
    assert job.run() == "warning"
    counters = job.counters.snapshot()
    assert counters["files_done"] == len(contents) - 1 and counters["files_total"] == len(contents)
    assert counters["bytes_read"] == sum(len(content) for content in contents.values()) - len(b"hello\n")
    assert counters["percent"] == 100.0
    assert any(line["level"] == "warning" and "readme.txt" in line["message"] for line in job.log_lines)
    listed = {entry["path"] for entry in job.vault.read_manifest(job.snapshot_id)["files"]}
    assert "readme.txt" not in listed and "empty.dat" in listed


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs are POSIX")
def test_it_leaves_out_special_files_and_symbolic_links(tmp_path):
    make_tree(tmp_path / "source")
    os.mkfifo(tmp_path / "source" / "pipe")  # reading it would block the job forever
    (tmp_path / "source" / "link").symlink_to(tmp_path / "source" / "readme.txt")
    job = BackupJob(source=tmp_path / "source", vault=open_vault(tmp_path / "vault"), item_id="files-x")
    assert run_job(job) == "succeeded"
    assert job.counters.files_total == 5


def test_it_fails_a_backup_of_a_missing_folder(tmp_path):
    job = BackupJob(source=tmp_path / "nowhere", vault=open_vault(tmp_path / "vault"), item_id="files-x")
    assert run_job(job) == "failed"
    assert job.log_lines[-1]["level"] == "error"


def test_it_stops_a_cancelled_backup_between_chunks(tmp_path, monkeypatch):
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "big.bin").write_bytes(os.urandom(4_000_000))
    # Small chunks make the backup slow enough to cancel in the middle of the file.
    monkeypatch.setattr("devices.agent.backup.CHUNK_BYTES", 4096)
    job = BackupJob(source=tmp_path / "source", vault=open_vault(tmp_path / "vault"), item_id="files-x")
    job.scan()
    worker = threading.Thread(target=job.run)
    worker.start()
    deadline = time.monotonic() + 10
    while job.counters.chunks_new == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    job.cancel.set()
    worker.join(10)
    assert not worker.is_alive()
    assert job.status == "cancelled"
    assert 0 < job.counters.bytes_read < 4_000_000 and job.counters.files_done == 0
    assert job.vault.snapshot_ids() == []  # no snapshot: a cancelled backup never writes its manifest
    assert job.log_lines[-1] == {**job.log_lines[-1], "level": "warning"}


def test_it_keeps_the_last_job_log_lines_within_the_protocol_limit(tmp_path):
    job = BackupJob(source=tmp_path, vault=open_vault(tmp_path / "vault"), item_id="files-x")
    for number in range(protocol.MAX_LOG_LINES + 20):
        job.log("warning", f"line {number}")
    lines = job.finished_log_lines()
    assert len(lines) == protocol.MAX_LOG_LINES
    assert lines[0]["message"] == "21 earlier lines left out" and lines[-1]["message"] == "line 519"


# --- Commands -------------------------------------------------------------------------------


def test_it_refuses_to_browse_without_consent(tmp_path):
    outcome = commands.browse_files({"path": str(tmp_path)}, allowed=False)
    assert (outcome.status, outcome.error, outcome.result) == ("failed", "browsing is not allowed on this device", {})


def test_it_lists_a_folder_when_browsing_is_allowed(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_bytes(b"12345")
    outcome = commands.browse_files({"path": str(tmp_path)}, allowed=True)
    assert outcome.status == "succeeded"
    assert outcome.result["entries"] == [
        {"name": "file.txt", "type": "file", "size": 5},
        {"name": "folder", "type": "directory", "size": 0},
    ]
    assert commands.browse_files({"path": str(tmp_path / "nope")}, allowed=True).error.startswith("no such directory")


def test_it_caps_a_listing_at_a_thousand_entries_and_one_frame(tmp_path):
    for number in range(1100):
        (tmp_path / f"{number:04d}-{'n' * 60}").touch()
    outcome = commands.browse_files({"path": str(tmp_path)}, allowed=True)
    assert outcome.result["truncated"] is True
    assert 0 < len(outcome.result["entries"]) <= 1000
    assert len(Agent._encode(outcome.frame(str(uuid.uuid4())))) <= protocol.MAX_FRAME_BYTES


def test_it_collects_the_most_recent_log_lines_within_one_frame():
    lines = [f"{number:04d} " + "x" * 995 for number in range(1000)]
    outcome = commands.collect_logs({"lines": 1000}, lines)
    assert outcome.result["truncated"] is True and outcome.result["lines"][-1] == lines[-1]
    assert len(Agent._encode(outcome.frame(str(uuid.uuid4())))) <= protocol.MAX_FRAME_BYTES
    assert commands.collect_logs({}, ["a", "b"]).result == {"lines": ["a", "b"]}
    assert commands.collect_logs({"lines": 1}, ["a", "b"]).result == {"lines": ["b"]}


def test_it_reports_that_there_is_no_update_channel_yet():
    result = commands.update_software({"version": "9.9"}).result
    assert result["update_available"] is False and result["current_version"] and result["requested_version"] == "9.9"


# --- The agent, offline: what it would send -------------------------------------------------


async def test_it_runs_a_command_once_and_acknowledges_a_repeat(tmp_path):
    agent = make_agent(tmp_path)
    command = {"type": "command", "command_id": str(uuid.uuid4()), "kind": "ping", "parameters": {}}
    agent._on_command(command)
    agent._on_command(command)  # delivered again before the acknowledgement was stored
    await asyncio.gather(*agent._tasks)
    agent._on_command(command)  # and again once it ran: as if its result had been lost
    await asyncio.gather(*agent._tasks)
    restarted = make_agent(tmp_path)
    restarted._on_command(command)  # and again after a restart
    await asyncio.gather(*restarted._tasks)
    sent, sent_after_restart = outbox(agent), outbox(restarted)
    assert [frame["type"] for frame in sent].count("command_ack") == 3
    results = [frame for frame in sent if frame["type"] == "command_result"]
    # Ran once: every result sent is the same one, and the last repeat got it again.
    assert len(results) >= 2 and all(result == results[0] for result in results) and sent[-1] == results[0]
    assert results[0]["status"] == "succeeded" and "pong" in results[0]["result"]
    # Results are kept in memory only: after a restart a repeat is acknowledged and not run again.
    assert [frame["type"] for frame in sent_after_restart] == ["command_ack"]


async def test_it_refuses_a_browse_command_without_consent(tmp_path):
    agent = make_agent(tmp_path)
    agent._on_command({"command_id": str(uuid.uuid4()), "kind": "browse_files", "parameters": {"path": "/"}})
    await asyncio.gather(*agent._tasks)
    result = outbox(agent)[-1]
    assert (result["status"], result["error"]) == ("failed", "browsing is not allowed on this device")


async def test_it_reports_a_backup_job_start_and_end_while_offline(tmp_path):
    contents = make_tree(tmp_path / "source")
    agent = make_agent(tmp_path, protect=[tmp_path / "source"], vault=tmp_path / "vault")
    item_id, vault_id = next(iter(agent.items)), agent.vault.vault_id
    command_id = str(uuid.uuid4())
    agent._on_command(
        {
            "command_id": command_id,
            "kind": "run_backup",
            "parameters": {"protected_item_id": item_id, "vault_id": vault_id},
        }
    )
    await asyncio.gather(*agent._tasks)
    sent = outbox(agent)
    assert [frame["type"] for frame in sent] == ["command_ack", "job_started", "job_finished", "command_result"]
    started, finished, result = sent[1], sent[2], sent[3]
    assert started["command_id"] == command_id and started["files_total"] == len(contents)
    assert (started["protected_item_id"], started["vault_id"]) == (item_id, vault_id)
    assert finished["status"] == "succeeded" and finished["files_done"] == len(contents)
    assert result["status"] == "succeeded" and result["result"]["job_id"] == started["job_id"]
    for frame in sent:  # every frame the agent would send passes the portal's own validation
        protocol.parse(json.dumps(frame))
    assert finished["chunks_new"] == finished["chunks_total"] == 6 and finished["snapshot_id"]
    status = agent.status_frame()
    protocol.parse(json.dumps({"v": 1, **status}))
    (vault_status,) = status["vaults"]
    stored = sum(path.stat().st_size for path in (tmp_path / "vault").rglob("*") if path.is_file())
    assert vault_status["bytes_used"] == stored == finished["vault_bytes_used"]
    assert vault_status["encryption_format"] == 1 and vault_status["key_id"] == agent.vault_key_id


async def test_it_cancels_a_running_job_on_command(tmp_path, monkeypatch):
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "big.bin").write_bytes(os.urandom(8_000_000))
    monkeypatch.setattr("devices.agent.backup.CHUNK_BYTES", 4096)
    agent = make_agent(tmp_path, protect=[tmp_path / "source"], vault=tmp_path / "vault")
    parameters = {"protected_item_id": next(iter(agent.items)), "vault_id": agent.vault.vault_id}
    agent._on_command({"command_id": str(uuid.uuid4()), "kind": "run_backup", "parameters": parameters})
    while not agent.jobs or next(iter(agent.jobs.values())).counters.bytes_read == 0:
        await asyncio.sleep(0.01)
    job_id = next(iter(agent.jobs))
    agent._on_command({"command_id": str(uuid.uuid4()), "kind": "cancel_job", "parameters": {"job_id": job_id}})
    await asyncio.wait_for(asyncio.gather(*agent._tasks), 20)
    by_type = {}
    for frame in outbox(agent):
        by_type.setdefault(frame["type"], []).append(frame)
    assert by_type["job_finished"][0]["status"] == "cancelled"
    results = by_type["command_result"]
    assert [result["status"] for result in results] == ["cancelled", "succeeded"]  # the backup, then the cancel
    assert results[1]["result"] == {"job_id": job_id, "job_status": "cancelled"}
    agent._on_command({"command_id": str(uuid.uuid4()), "kind": "cancel_job", "parameters": {"job_id": job_id}})
    await asyncio.gather(*agent._tasks)
    assert outbox(agent)[-1]["error"] == "no such job"


def test_it_runs_without_django():
    """The agent ships to customers' machines: the standard library, websockets, bcrypt and cryptography only."""
    code = (
        "import sys, devices.agent.__main__, devices.agent.client\n"
        "print(sorted({name.split('.')[0] for name in sys.modules} & {'django', 'channels', 'rest_framework'}))"
    )
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    repository = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=repository, check=True
    )
    assert done.stdout.strip() == "[]"
