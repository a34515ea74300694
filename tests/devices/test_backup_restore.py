"""Encrypted backup, restore, retention, key rotation and crypto-shredding, without a live portal.

The agent's jobs run here in-process on a local-directory vault. The profile secrets live either in
memory (MemoryProfile, standing in for the portal's REST API, the network edge) or in the database
through the portal's own services (ServiceProfile), so that crypto-shredding is shown end to end.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest

from devices import keys, services
from devices.agent import crypto, profile, vault
from devices.agent.backup import BackupJob, RetentionJob
from devices.agent.restore import RestoreJob
from devices.agent.storage import LocalDirectoryStorage
from devices.models import BackupAccount
from tenants.audit import SYSTEM
from tenants.models import AuditEvent

MARKER = b"PLAINTEXT-MARKER-7f3a"
VAULT_ID = "local-test-vault"
ITEM_ID = "files-test-item"
R_KEY = b"R" * 24


class MemoryProfile:
    """The portal's profile endpoint, in memory: a blob and a version, compare-and-swap on write."""

    def __init__(self) -> None:
        self.version, self.blob, self.writes = 0, b"", 0
        self._lock = threading.Lock()

    def fetch(self) -> profile.StoredProfile:
        with self._lock:
            return profile.StoredProfile(self.version, self.blob)

    def store(self, *, version: int, blob: bytes) -> int:
        with self._lock:
            if version != self.version:
                raise profile.ProfileConflict
            self.blob, self.version, self.writes = blob, self.version + 1, self.writes + 1
            return self.version


def keyring(store: profile.ProfileStore, r_key: bytes = R_KEY) -> profile.Keyring:
    return profile.Keyring(
        store, profile_key=crypto.profile_key(r_key), account=profile.AccountIdentity("acme", "alice")
    )


def make_tree(root: Path) -> dict[str, bytes]:
    rng = random.Random(11)
    big = rng.randbytes(2_600_000)  # three chunks, the last one short
    contents = {
        "readme.txt": b"hello " + MARKER + b"\n",
        "empty.dat": b"",
        "photos/2024/beach.jpg": big,
        "photos/2024/beach copy.jpg": big,  # a copy: deduplicated inside one backup
        "photos/notes é.txt": "café ".encode() + MARKER,
        "docs/deep/er/file.bin": rng.randbytes(70_000) + MARKER,
    }
    for relative, content in contents.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (root / "docs" / "empty folder").mkdir()
    os.chmod(root / "readme.txt", 0o640)
    os.utime(root / "readme.txt", ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    return contents


def tree(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.fixture
def store() -> MemoryProfile:
    return MemoryProfile()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    make_tree(tmp_path / "source")
    return tmp_path / "source"


@pytest.fixture
def storage(tmp_path: Path) -> LocalDirectoryStorage:
    return LocalDirectoryStorage(tmp_path / "vault")


def back_up(store, storage, source: Path, r_key: bytes = R_KEY, **options) -> BackupJob:
    opened = keyring(store, r_key).open_vault(storage, VAULT_ID, create=True)
    job = BackupJob(source=source, vault=opened, item_id=ITEM_ID, workers=3, **options)
    job.scan()
    job.run()
    return job


def restore(store, storage, target: Path, snapshot_id: str | None = None, r_key: bytes = R_KEY) -> RestoreJob:
    opened = keyring(store, r_key).open_vault(storage, VAULT_ID, create=False)
    job = RestoreJob(vault=opened, target=target, item_id=ITEM_ID, snapshot_id=snapshot_id)
    job.scan()
    job.run()
    return job


def flip_bit(path: Path, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[bit // 8 % len(data)] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))


# --- Backup and restore ---------------------------------------------------------------------


def test_it_backs_up_and_restores_a_tree_byte_for_byte(store, storage, source, tmp_path):
    job = back_up(store, storage, source)
    assert job.status == "succeeded", job.log_lines
    counters = job.counters.snapshot()
    total = sum(len(content) for content in tree(source).values())
    assert counters["files_done"] == counters["files_total"] == 6 and counters["bytes_read"] == total
    assert counters["chunks_total"] == 9 and counters["chunks_new"] == 6  # the copy's three chunks deduplicated
    assert counters["bytes_new"] == total - 2_600_000
    assert counters["vault_bytes_used"] == job.vault.usage()

    restored = restore(store, storage, tmp_path / "restored")
    assert restored.status == "succeeded", restored.log_lines
    assert tree(tmp_path / "restored") == tree(source)
    assert (tmp_path / "restored" / "docs" / "empty folder").is_dir()
    readme = (tmp_path / "restored" / "readme.txt").stat()
    assert stat.S_IMODE(readme.st_mode) == 0o640 and readme.st_mtime_ns == 1_600_000_000_123_456_789
    assert not [path for path in (tmp_path / "restored").rglob(".*")]  # no temporary file left


def test_it_stores_no_plaintext_and_no_plain_content_hash(store, storage, source, tmp_path):
    back_up(store, storage, source)
    stored = [path for path in (tmp_path / "vault").rglob("*") if path.is_file()]
    assert stored and all(MARKER not in path.read_bytes() for path in stored)
    assert all(b"readme" not in path.read_bytes() and "readme" not in str(path) for path in stored)
    names = {path.name for path in stored}
    for content in tree(source).values():
        assert hashlib.sha256(content).hexdigest() not in names  # ids are keyed: no content hash shows
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in stored)


def test_it_deduplicates_an_unchanged_and_a_changed_folder(store, storage, source):
    first = back_up(store, storage, source)
    again = back_up(store, storage, source)
    assert again.counters.chunks_new == 0 and again.counters.bytes_new == 0
    assert again.counters.bytes_uploaded < 2000  # the manifest only
    assert again.counters.dedup_ratio() == 0.0 and first.counters.dedup_ratio() > 1

    with open(source / "photos" / "2024" / "beach.jpg", "r+b") as handle:  # change the second chunk only
        handle.seek(1_500_000)
        handle.write(b"changed")
    (source / "new.txt").write_bytes(b"a new file")
    changed = back_up(store, storage, source)
    assert changed.counters.chunks_new == 2  # the changed chunk and the new file
    assert changed.counters.bytes_new == 1024 * 1024 + len(b"a new file")
    assert len(vault.Vault(storage, first.vault.keys).snapshot_ids()) == 3


def test_it_leaves_no_snapshot_when_cancelled_and_reuses_its_chunks(store, storage, tmp_path, monkeypatch):
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "data.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    opened = keyring(store).open_vault(storage, VAULT_ID, create=True)
    job = BackupJob(source=tmp_path / "big", vault=opened, item_id=ITEM_ID, workers=2)
    job.scan()
    original = opened.put_chunk

    def slow_put(*args, **kwargs):
        time.sleep(0.05)
        return original(*args, **kwargs)

    monkeypatch.setattr(opened, "put_chunk", slow_put)  # slow storage, so the cancel lands mid-file
    worker = threading.Thread(target=job.run)
    worker.start()
    while job.counters.chunks_new < 2:
        time.sleep(0.005)
    job.cancel.set()
    worker.join(20)
    assert job.status == "cancelled" and opened.snapshot_ids() == []
    stored = len(opened.stored_chunks())
    assert 0 < stored < 8
    again = back_up(store, storage, tmp_path / "big")
    assert again.status == "succeeded" and again.counters.chunks_new == 8 - stored


def test_it_skips_an_unreadable_file_with_a_warning(store, storage, source):
    opened = keyring(store).open_vault(storage, VAULT_ID, create=True)
    job = BackupJob(source=source, vault=opened, item_id=ITEM_ID)
    job.scan()
    (source / "readme.txt").unlink()  # gone between listing and reading
    assert job.run() == "warning"
    assert job.counters.files_done == 5 and job.counters.percent() == 100.0
    manifest = opened.read_manifest(job.snapshot_id)
    assert "readme.txt" not in {entry["path"] for entry in manifest["files"]}


# --- Tampering ------------------------------------------------------------------------------


def test_it_fails_loudly_and_names_the_object_for_a_flipped_bit_anywhere(store, storage, source, tmp_path):
    back_up(store, storage, source)
    pristine = tmp_path / "pristine"
    shutil.copytree(tmp_path / "vault", pristine)
    objects = sorted(path.relative_to(pristine).as_posix() for path in pristine.rglob("*") if path.is_file())
    objects.remove("lock")
    assert {name.split("/")[0] for name in objects} == {"keys", "chunks", "snapshots"}
    expected = tree(source)
    rng = random.Random(3)
    for number, name in enumerate(objects):
        shutil.rmtree(tmp_path / "vault")
        shutil.copytree(pristine, tmp_path / "vault")
        flip_bit(tmp_path / "vault" / name, rng.randrange(8 * (tmp_path / "vault" / name).stat().st_size))
        target = tmp_path / f"target-{number}"
        try:
            job = restore(store, storage, target)
        except crypto.IntegrityError as error:  # the key object: the vault does not even open
            assert name.startswith("keys/") and error.name == name
            assert not target.exists()
            continue
        assert job.status == "failed", name
        assert any(name in line["message"] and "failed verification" in line["message"] for line in job.log_lines)
        # Whatever was written is right: no wrong file, no partial file.
        written = tree(target) if target.exists() else {}
        assert all(expected[path] == content for path, content in written.items()), name
        assert not [path for path in target.rglob(".*")] if target.exists() else True


def test_it_rejects_a_chunk_moved_under_another_chunks_name(store, storage, source, tmp_path):
    job = back_up(store, storage, source)
    chunks = sorted(job.vault.stored_chunks())
    first, second = (tmp_path / "vault" / vault.Vault.chunk_name(chunk_id) for chunk_id in chunks[:2])
    first.write_bytes(second.read_bytes())  # a valid object, in the wrong place
    restored = restore(store, storage, tmp_path / "restored")
    assert restored.status == "failed"
    assert any(vault.Vault.chunk_name(chunks[0]) in line["message"] for line in restored.log_lines)


def test_it_never_writes_outside_the_target_folder(store, storage, tmp_path):
    opened = keyring(store).open_vault(storage, VAULT_ID, create=True)
    chunk_id = opened.chunk_ids_of.of(b"evil")
    opened.put_chunk(chunk_id, b"evil")
    for path in ("../escaped.txt", "/etc/escaped.txt", "a/../../escaped.txt"):
        snapshot_id = vault.new_snapshot_id()
        opened.write_manifest(
            {
                "format": 1,
                "snapshot_id": snapshot_id,
                "item_id": ITEM_ID,
                "files": [{"path": path, "size": 4, "mode": 0o644, "chunks": [chunk_id]}],
                "folders": [],
            }
        )
        job = restore(store, storage, tmp_path / "target" / snapshot_id, snapshot_id=snapshot_id)
        assert job.status == "failed" and "leave the target folder" in job.log_lines[-1]["message"]
    assert not list(tmp_path.rglob("escaped.txt"))


def test_it_restores_only_into_a_new_or_empty_folder(store, storage, source, tmp_path):
    back_up(store, storage, source)
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "keep.txt").write_text("mine")
    job = restore(store, storage, tmp_path / "occupied")
    assert job.status == "failed" and "not empty" in job.log_lines[-1]["message"]
    assert tree(tmp_path / "occupied") == {"keep.txt": b"mine"}
    (tmp_path / "empty").mkdir()
    assert restore(store, storage, tmp_path / "empty").status == "succeeded"


# --- Retention ------------------------------------------------------------------------------


def test_it_keeps_the_newest_snapshots_and_deletes_chunks_nothing_uses(store, storage, source, tmp_path):
    snapshots = []
    for round_number in range(4):
        (source / f"round-{round_number}.bin").write_bytes(os.urandom(300_000))
        if round_number:
            (source / f"round-{round_number - 1}.bin").unlink()
        snapshots.append(back_up(store, storage, source).snapshot_id)
    opened = keyring(store).open_vault(storage, VAULT_ID, create=False)
    before = len(opened.stored_chunks())
    job = RetentionJob(vault=opened, item_id=ITEM_ID, keep=2)
    assert job.run() == "succeeded"
    assert opened.snapshot_ids() == sorted(snapshots[2:])
    assert job.result["snapshots_deleted"] == 2 and job.result["chunks_deleted"] == 2  # round-0's and round-1's
    assert len(opened.stored_chunks()) == before - 2
    assert job.counters.vault_bytes_used == opened.usage()
    for snapshot_id in snapshots[2:]:
        assert restore(store, storage, tmp_path / snapshot_id, snapshot_id=snapshot_id).status == "succeeded"


def test_it_applies_retention_after_a_backup_when_asked(store, storage, source):
    for _ in range(3):
        job = back_up(store, storage, source, keep_snapshots=1)
    assert job.status == "succeeded" and job.vault.snapshot_ids() == [job.snapshot_id]
    assert job.result["snapshots_deleted"] == 1


def test_it_deletes_nothing_when_a_manifest_fails_verification(store, storage, source, tmp_path):
    for _ in range(3):
        back_up(store, storage, source)
    opened = keyring(store).open_vault(storage, VAULT_ID, create=False)
    before = sorted(path for path in (tmp_path / "vault").rglob("*") if path.is_file())
    flip_bit(tmp_path / "vault" / vault.Vault.snapshot_name(opened.snapshot_ids()[0]), 300)
    job = RetentionJob(vault=opened, item_id=ITEM_ID, keep=1)
    assert job.run() == "failed" and "Nothing was deleted" in job.log_lines[-1]["message"]
    assert sorted(path for path in (tmp_path / "vault").rglob("*") if path.is_file()) == before


# --- Keys -----------------------------------------------------------------------------------


def test_it_sets_a_vault_up_with_random_keys_kept_only_in_the_profile(store, storage, source, tmp_path):
    back_up(store, storage, source)
    (key_id,) = vault.key_ids(storage)
    secrets = profile.profile_open(
        store.blob, profile_key=crypto.profile_key(R_KEY), account=profile.AccountIdentity("acme", "alice")
    )
    entry = secrets.vaults[VAULT_ID]
    assert entry.key_id == key_id and len(entry.e_key) == 16
    # E is nowhere in the vault, and the server's blob does not hold it in the clear.
    everything = b"".join(path.read_bytes() for path in (tmp_path / "vault").rglob("*") if path.is_file())
    assert (
        entry.e_key not in everything and entry.e_key not in store.blob and entry.e_key.hex().encode() not in store.blob
    )
    second = LocalDirectoryStorage(tmp_path / "vault-2")
    keyring(store).open_vault(second, "another-vault", create=True)
    assert set(
        profile.profile_open(store.blob, profile_key=crypto.profile_key(R_KEY), account=keyring(store).account).vaults
    ) == {
        VAULT_ID,
        "another-vault",
    }


def test_it_rotates_e_by_rewrapping_a_without_touching_the_data(store, storage, source, tmp_path):
    back_up(store, storage, source)
    data = {
        path: (path.read_bytes(), path.stat().st_mtime_ns)
        for path in (tmp_path / "vault").rglob("*")
        if path.is_file() and not path.relative_to(tmp_path / "vault").as_posix().startswith(("keys", "lock"))
    }
    (old_key_id,) = vault.key_ids(storage)
    old, new = keyring(store).rotate(storage, VAULT_ID)
    assert old == old_key_id and vault.key_ids(storage) == [new] and new != old
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in data} == data
    assert restore(store, storage, tmp_path / "after-rotation").status == "succeeded"
    assert tree(tmp_path / "after-rotation") == tree(source)


def test_it_retries_a_profile_write_that_lost_a_race(store, tmp_path):
    class RacedProfile(MemoryProfile):
        """Another device sets vault-b up between this device's read and its write."""

        raced = False

        def store(self, *, version: int, blob: bytes) -> int:
            if not self.raced:
                self.raced = True
                other = keyring(MemoryProfile())
                secrets = profile.profile_open(self.blob, profile_key=other.profile_key, account=other.account)
                secrets.vaults["vault-b"] = profile.VaultEntry(vault.new_key_id(), bytes(16))
                super().store(
                    version=self.version,
                    blob=profile.profile_seal(secrets, profile_key=other.profile_key, account=other.account),
                )
            return super().store(version=version, blob=blob)

    raced = RacedProfile()
    keyring(raced).open_vault(LocalDirectoryStorage(tmp_path / "a"), "vault-a", create=True)
    secrets = profile.profile_open(raced.blob, profile_key=crypto.profile_key(R_KEY), account=keyring(raced).account)
    assert set(secrets.vaults) == {"vault-a", "vault-b"} and raced.version == 2  # the 409 was retried


def test_it_rewraps_the_profile_under_a_new_password(store, storage, source, tmp_path):
    back_up(store, storage, source)
    account = profile.AccountIdentity("acme", "alice")
    new_r = b"N" * 24
    store.blob = profile.profile_rewrap(
        store.blob, old_key=crypto.profile_key(R_KEY), new_key=crypto.profile_key(new_r), account=account
    )
    assert restore(store, storage, tmp_path / "new-password", r_key=new_r).status == "succeeded"
    with pytest.raises(profile.ProfileUnreadable):
        restore(store, storage, tmp_path / "old-password", r_key=R_KEY)


def test_it_never_overwrites_a_profile_it_cannot_open(store, storage, source, tmp_path):
    back_up(store, storage, source)
    blob = store.blob
    with pytest.raises(profile.ProfileUnreadable):
        keyring(store, b"W" * 24).open_vault(LocalDirectoryStorage(tmp_path / "v2"), "v2", create=True)
    assert store.blob == blob


# --- Crypto-shredding, through the portal's services -----------------------------------------


class ServiceProfile:
    """The profile secrets as the portal stores them: devices.services and the account row."""

    def __init__(self, device) -> None:
        self.device = device

    def fetch(self) -> profile.StoredProfile:
        account = BackupAccount.objects.get(pk=self.device.account_id)
        return profile.StoredProfile(account.profile_secrets_version, bytes(account.profile_secrets))

    def store(self, *, version: int, blob: bytes) -> int:
        try:
            return services.profile_secrets_put(device=self.device, version=version, secrets_blob=blob)
        except services.RegistrationError as error:
            if error.status == 409:
                raise profile.ProfileConflict from None
            raise


def test_it_makes_a_vault_unrestorable_by_anyone_after_crypto_shredding(acme, source, tmp_path):
    password = "account-password-1"
    account = services.account_create(actor=SYSTEM, tenant=acme.tenant, username="alice", password=password)
    l_key, r_key = keys.derive_keys("acme", "alice", password)
    device = services.device_register(
        tenant_slug="acme", username="alice", l_key_hex=l_key.hex(), device_id="device-0001",
        inventory={"name": "laptop"}, ip_address=None,
    ).device  # fmt: skip
    store = ServiceProfile(device)
    storage = LocalDirectoryStorage(tmp_path / "vault")
    assert back_up(store, storage, source, r_key=r_key).status == "succeeded"
    assert restore(store, storage, tmp_path / "before", r_key=r_key).status == "succeeded"

    services.account_secrets_shred(account=account, actor=SYSTEM)

    account.refresh_from_db()
    assert bytes(account.profile_secrets) == b"" and account.profile_secrets_version == 2
    event = AuditEvent.objects.get(action="account.secrets_shredded")
    assert event.target_id == str(account.pk) and event.after["profile_secrets_bytes"] > 0
    # The device, the password and the whole vault are all at hand: still nothing opens it.
    for create in (False, True):  # not even a new backup may set a fresh key up over the old data
        with pytest.raises(vault.VaultKeyMissing, match="cannot be decrypted by anyone"):
            keyring(store, r_key).open_vault(storage, VAULT_ID, create=create)
    assert not (tmp_path / "after").exists()
    # Without E, A stays sealed: trying every E is 2^128 work, and nothing else unwraps it.
    (key_id,) = vault.key_ids(storage)
    with pytest.raises(crypto.IntegrityError):
        vault.keys_open(storage, vault_id=VAULT_ID, e_key=bytes(16), key_id=key_id)


def test_it_never_replaces_a_vaults_key_when_two_jobs_set_it_up_at_once(storage):
    """Both jobs found no key object and create one under the id from the profile: the second gets the first's A."""
    e_key, key_id = bytes(range(16)), vault.new_key_id()
    first = vault.keys_create(storage, vault_id=VAULT_ID, e_key=e_key, key_id=key_id)
    second = vault.keys_create(storage, vault_id=VAULT_ID, e_key=e_key, key_id=key_id)
    assert second.a_key == first.a_key and vault.key_ids(storage) == [key_id]
    with pytest.raises(FileExistsError):
        storage.put(vault.key_object_name(key_id), [b"another"], exclusive=True)
    assert not [path for path in storage.root.rglob(".*")]  # no temporary file left behind
