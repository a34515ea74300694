"""A storage vault's layout and keys: A wrapped by E, chunks, snapshot manifests, retention.

Objects (every one sealed, see devices.agent.crypto and docs/crypto.md):

    keys/<key id>            A, sealed under W = HKDF(E), context (vault id, key id)
    chunks/<id[0:2]>/<id>    one chunk of file data, sealed under D = HKDF(A), context (vault id, chunk id)
    snapshots/<snapshot id>  one snapshot's manifest (JSON), sealed under D, context (vault id, snapshot id)

A chunk's id is HMAC-SHA256(I = HKDF(A), plaintext), so equal chunks are stored once per vault
(deduplication) without the id telling anyone what the chunk holds. Rotating E writes A again
under the new E: no chunk is touched.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from devices.agent import crypto
from devices.agent.storage import Storage

KEYS = "keys/"
CHUNKS = "chunks/"
SNAPSHOTS = "snapshots/"
KEY_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
CHUNK_ID_PATTERN = re.compile(r"^[0-9a-f]{64}$")
SNAPSHOT_ID_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
MANIFEST_FORMAT = 1


class VaultError(Exception):
    """The vault cannot be used; the message says why, for the job log and the command's error."""


class VaultKeyMissing(VaultError):
    pass


def new_key_id() -> str:
    return secrets.token_hex(16)


def new_snapshot_id(now: datetime | None = None) -> str:
    """Return a snapshot id that sorts by time: UTC stamp, then 32 random bits."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class VaultKeys:
    """An opened vault's keys: A, and the two keys derived from it."""

    vault_id: str
    key_id: str  # which E wraps A (the name of the key object)
    a_key: bytes = field(repr=False)
    data_key: bytes = field(repr=False)
    chunk_id_key: bytes = field(repr=False)

    @classmethod
    def from_a_key(cls, vault_id: str, key_id: str, a_key: bytes) -> VaultKeys:
        return cls(vault_id, key_id, a_key, crypto.data_key(a_key), crypto.chunk_id_key(a_key))


def key_object_name(key_id: str) -> str:
    if not KEY_ID_PATTERN.match(key_id):
        raise ValueError("not a key id")
    return KEYS + key_id


def key_ids(storage: Storage) -> list[str]:
    return sorted(name.removeprefix(KEYS) for name, _ in storage.list(KEYS))


def holds_data(storage: Storage) -> bool:
    """Return whether anything was ever stored in the vault (a key, a chunk or a snapshot)."""
    return any(True for prefix in (KEYS, CHUNKS, SNAPSHOTS) for _ in storage.list(prefix))


def _seal_a(vault_id: str, key_id: str, e_key: bytes, a_key: bytes) -> bytes:
    return crypto.seal(crypto.wrap_key(e_key), crypto.Kind.VAULT_KEY, (vault_id, key_id), a_key)


def keys_create(storage: Storage, *, vault_id: str, e_key: bytes, key_id: str) -> VaultKeys:
    """Set up a new vault: a random A, stored wrapped by E.

    The key object is created exclusively: when two jobs set one vault up at once, the second opens
    the A the first stored instead of replacing it (which would orphan the first one's chunks).
    """
    a_key = crypto.random_key(crypto.A_KEY_BYTES)
    try:
        storage.put(key_object_name(key_id), [_seal_a(vault_id, key_id, e_key, a_key)], exclusive=True)
    except FileExistsError:
        return keys_open(storage, vault_id=vault_id, e_key=e_key, key_id=key_id)
    storage.flush()
    return VaultKeys.from_a_key(vault_id, key_id, a_key)


def keys_open(storage: Storage, *, vault_id: str, e_key: bytes, key_id: str) -> VaultKeys:
    """Unwrap A with E; raise VaultKeyMissing or crypto.IntegrityError when that cannot be done."""
    name = key_object_name(key_id)
    try:
        sealed = storage.get(name)
    except FileNotFoundError:
        raise VaultKeyMissing(
            f"The vault holds no {name}: the account's profile names a key this vault does not have."
        ) from None
    a_key = crypto.open_sealed(crypto.wrap_key(e_key), crypto.Kind.VAULT_KEY, (vault_id, key_id), sealed, name=name)
    if len(a_key) != crypto.A_KEY_BYTES:
        raise crypto.IntegrityError(name, "holds a key of the wrong size")
    return VaultKeys.from_a_key(vault_id, key_id, a_key)


def keys_rewrap(storage: Storage, keys: VaultKeys, *, e_key: bytes, key_id: str) -> VaultKeys:
    """Store A again, wrapped by a new E under a new key id; the data is not touched."""
    storage.put(key_object_name(key_id), [_seal_a(keys.vault_id, key_id, e_key, keys.a_key)], exclusive=True)
    storage.flush()
    return VaultKeys.from_a_key(keys.vault_id, key_id, keys.a_key)


def keys_remove_except(storage: Storage, key_id: str) -> list[str]:
    """Delete every key object but `key_id`'s (after a rotation); return the ids removed."""
    removed = [other for other in key_ids(storage) if other != key_id]
    for other in removed:
        storage.delete(key_object_name(other))
    storage.flush()
    return removed


def snapshot_order(manifest: dict[str, Any]) -> tuple[str, str]:
    """Sort key of snapshots, oldest first: the time written in the manifest (ids share a second)."""
    return (manifest.get("created_at", ""), manifest["snapshot_id"])


@dataclass
class RetentionResult:
    snapshots_deleted: list[str] = field(default_factory=list)
    chunks_deleted: int = 0
    bytes_freed: int = 0


class Vault:
    """An opened vault: store and fetch chunks and manifests, apply retention."""

    def __init__(self, storage: Storage, keys: VaultKeys) -> None:
        self.storage, self.keys = storage, keys
        self.chunk_ids_of = crypto.ChunkIds(keys.chunk_id_key)

    @property
    def vault_id(self) -> str:
        return self.keys.vault_id

    # --- Chunks --------------------------------------------------------------------------

    @staticmethod
    def chunk_name(chunk_id: str) -> str:
        if not CHUNK_ID_PATTERN.match(chunk_id):
            raise ValueError("not a chunk id")
        return f"{CHUNKS}{chunk_id[:2]}/{chunk_id}"

    def stored_chunks(self) -> dict[str, int]:
        """Return every stored chunk's id and object size.

        A chunk object is complete whenever it exists under its name (storage puts are all or
        nothing), so a chunk left by an interrupted backup may be deduplicated against safely.
        """
        chunks = {}
        for name, size in self.storage.list(CHUNKS):
            chunk_id = name.rsplit("/", 1)[1]
            if CHUNK_ID_PATTERN.match(chunk_id):
                chunks[chunk_id] = size
        return chunks

    def usage(self, chunks: dict[str, int] | None = None) -> int:
        """Return the bytes the vault's objects take (`chunks`: stored_chunks(), if already listed)."""
        chunks = self.stored_chunks() if chunks is None else chunks
        others = sum(size for prefix in (KEYS, SNAPSHOTS) for _, size in self.storage.list(prefix))
        return sum(chunks.values()) + others

    def put_chunk(self, chunk_id: str, data: bytes | memoryview, buffer: bytearray | None = None) -> int:
        """Seal and store one chunk; return the bytes stored."""
        parts = crypto.seal_parts(self.keys.data_key, crypto.Kind.CHUNK, (self.vault_id, chunk_id), data, buffer=buffer)
        return self.storage.put(self.chunk_name(chunk_id), parts)

    def get_chunk(self, chunk_id: str) -> bytes:
        """Return a chunk's plaintext after checking its tag and that its content matches its id."""
        name = self.chunk_name(chunk_id)
        try:
            sealed = self.storage.get(name)
        except FileNotFoundError:
            raise crypto.IntegrityError(name, "is missing from the vault") from None
        plaintext = crypto.open_sealed(
            self.keys.data_key, crypto.Kind.CHUNK, (self.vault_id, chunk_id), sealed, name=name
        )
        if not crypto.constant_time_equal(self.chunk_ids_of.of(plaintext), chunk_id):
            raise crypto.IntegrityError(name, "its content does not match its id")
        return plaintext

    # --- Snapshots -----------------------------------------------------------------------

    @staticmethod
    def snapshot_name(snapshot_id: str) -> str:
        if not SNAPSHOT_ID_PATTERN.match(snapshot_id):
            raise ValueError("not a snapshot id")
        return SNAPSHOTS + snapshot_id

    def snapshot_ids(self) -> list[str]:
        names = (name.removeprefix(SNAPSHOTS) for name, _ in self.storage.list(SNAPSHOTS))
        return sorted(name for name in names if SNAPSHOT_ID_PATTERN.match(name))

    def write_manifest(self, manifest: dict[str, Any]) -> int:
        """Seal and store a snapshot's manifest (the snapshot exists from this moment); return its size."""
        snapshot_id = manifest["snapshot_id"]
        plaintext = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        sealed = crypto.seal(self.keys.data_key, crypto.Kind.MANIFEST, (self.vault_id, snapshot_id), plaintext)
        size = self.storage.put(self.snapshot_name(snapshot_id), [sealed])
        self.storage.flush()
        return size

    def read_manifest(self, snapshot_id: str) -> dict[str, Any]:
        name = self.snapshot_name(snapshot_id)
        try:
            sealed = self.storage.get(name)
        except FileNotFoundError:
            raise VaultError(f"The vault holds no snapshot {snapshot_id}.") from None
        plaintext = crypto.open_sealed(
            self.keys.data_key, crypto.Kind.MANIFEST, (self.vault_id, snapshot_id), sealed, name=name
        )
        manifest = json.loads(plaintext)
        if manifest.get("format") != MANIFEST_FORMAT or manifest.get("snapshot_id") != snapshot_id:
            raise crypto.IntegrityError(name, "is not a manifest of this snapshot")
        return manifest

    def manifests(self) -> Iterator[dict[str, Any]]:
        for snapshot_id in self.snapshot_ids():
            yield self.read_manifest(snapshot_id)

    def latest_snapshot(self, item_id: str) -> str | None:
        found = [manifest for manifest in self.manifests() if manifest.get("item_id") == item_id]
        return max(found, key=snapshot_order)["snapshot_id"] if found else None

    # --- Retention -----------------------------------------------------------------------

    def retain(self, *, item_id: str, keep: int) -> RetentionResult:
        """Keep the `keep` newest snapshots of one protected item, then delete chunks no snapshot uses.

        Every manifest is read (and verified) first: if one cannot be read nothing is deleted, since
        its chunks cannot be told apart from unused ones. The caller holds the vault's lock.
        """
        if keep < 1:
            raise ValueError("keep at least one snapshot")
        manifests = {manifest["snapshot_id"]: manifest for manifest in self.manifests()}
        of_item = [
            manifest["snapshot_id"]
            for manifest in sorted(manifests.values(), key=snapshot_order)
            if manifest["item_id"] == item_id
        ]
        result = RetentionResult(snapshots_deleted=of_item[:-keep])
        for snapshot_id in result.snapshots_deleted:
            self.storage.delete(self.snapshot_name(snapshot_id))
            del manifests[snapshot_id]
        self.storage.flush()
        referenced = {
            chunk for manifest in manifests.values() for entry in manifest["files"] for chunk in entry["chunks"]
        }
        for chunk_id, size in self.stored_chunks().items():
            if chunk_id not in referenced:
                self.storage.delete(self.chunk_name(chunk_id))
                result.chunks_deleted += 1
                result.bytes_freed += size
        self.storage.flush()
        return result
