"""The account's profile secrets: each vault's E, sealed under P = HKDF(R) on the device.

The portal keeps the sealed blob and its version and hands them back byte for byte; it can read
none of it. The plaintext is JSON:

    {"format": 1, "vaults": {"<vault id>": {"key_id": "<32 hex>", "e_key": "<32 hex>", "created_at": "..."}}}

sealed as a crypto.Kind.PROFILE object with context (tenant slug, normalised username). An empty
blob means no secrets yet. Writing is compare-and-swap on the version (409 on conflict): every
change here re-reads the profile, applies itself and tries again when another device got there first.

E is never written to the device's disk and never kept between jobs: every job reads the profile
afresh, so deleting the profile on the portal (crypto-shredding) leaves no copy of E anywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from devices import keys as account_keys
from devices.agent import crypto, vault
from devices.agent.storage import Storage

PROFILE_FORMAT = 1
WRITE_ATTEMPTS = 5


class ProfileConflict(Exception):
    """The profile changed since it was read (HTTP 409)."""


class ProfileUnreadable(vault.VaultError):
    pass


@dataclass(frozen=True)
class StoredProfile:
    version: int
    blob: bytes


class ProfileStore(Protocol):
    """Where the sealed profile lives: the portal (devices.agent.rest), or memory in tests."""

    def fetch(self) -> StoredProfile: ...

    def store(self, *, version: int, blob: bytes) -> int:
        """Store `blob` if the current version is `version`; return the new version, or raise ProfileConflict."""
        ...


@dataclass
class VaultEntry:
    key_id: str
    e_key: bytes = field(repr=False)
    created_at: str = ""


@dataclass
class ProfileSecrets:
    vaults: dict[str, VaultEntry] = field(default_factory=dict)

    def to_json(self) -> bytes:
        document = {
            "format": PROFILE_FORMAT,
            "vaults": {
                vault_id: {"key_id": entry.key_id, "e_key": entry.e_key.hex(), "created_at": entry.created_at}
                for vault_id, entry in sorted(self.vaults.items())
            },
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ProfileSecrets:
        document = json.loads(raw)
        if document.get("format") != PROFILE_FORMAT:
            raise ValueError("unknown profile format")
        vaults = {
            vault_id: VaultEntry(entry["key_id"], bytes.fromhex(entry["e_key"]), entry.get("created_at", ""))
            for vault_id, entry in document["vaults"].items()
        }
        return cls(vaults)


@dataclass(frozen=True)
class AccountIdentity:
    tenant: str
    username: str

    @property
    def context(self) -> tuple[str, str]:
        return (self.tenant, account_keys.normalise_username(self.username))


def profile_seal(secrets: ProfileSecrets, *, profile_key: bytes, account: AccountIdentity) -> bytes:
    return crypto.seal(profile_key, crypto.Kind.PROFILE, account.context, secrets.to_json())


def profile_open(blob: bytes, *, profile_key: bytes, account: AccountIdentity) -> ProfileSecrets:
    """Return the secrets in a sealed profile (an empty blob holds none)."""
    if not blob:
        return ProfileSecrets()
    try:
        raw = crypto.open_sealed(profile_key, crypto.Kind.PROFILE, account.context, blob, name="the profile secrets")
    except crypto.IntegrityError:
        raise ProfileUnreadable(
            "The account's profile secrets cannot be opened with this password: it was changed on another "
            "device (restart this agent with the new password), or the profile was damaged."
        ) from None
    return ProfileSecrets.from_json(raw)


class Keyring:
    """The account's vault keys, read from the profile on demand; nothing is cached between calls."""

    def __init__(self, store: ProfileStore, *, profile_key: bytes, account: AccountIdentity) -> None:
        self.store, self.profile_key, self.account = store, profile_key, account

    def read(self) -> tuple[int, ProfileSecrets]:
        stored = self.store.fetch()
        return stored.version, profile_open(stored.blob, profile_key=self.profile_key, account=self.account)

    def _update(self, change: Any) -> ProfileSecrets:
        """Apply `change(secrets)` and store the result, re-reading and retrying on a version conflict."""
        for _ in range(WRITE_ATTEMPTS):
            version, secrets = self.read()
            if change(secrets) is False:
                return secrets
            blob = profile_seal(secrets, profile_key=self.profile_key, account=self.account)
            try:
                self.store.store(version=version, blob=blob)
            except ProfileConflict:
                continue
            return secrets
        raise vault.VaultError("The account's profile kept changing while this device tried to update it.")

    def open_vault(self, storage: Storage, vault_id: str, *, create: bool) -> vault.Vault:
        """Open a vault with E from the profile, or set up a new one (random A and E) when `create`.

        A vault that holds data but whose E the profile does not have cannot be opened by anyone:
        that is what crypto-shredding the profile means, and it is reported as such.
        """
        _, secrets = self.read()
        entry = secrets.vaults.get(vault_id)
        if entry is None:
            if vault.holds_data(storage):
                raise vault.VaultKeyMissing(
                    f"The account's profile holds no key for vault {vault_id}, which holds encrypted data: "
                    "the key was deleted (or the vault belongs to another account), so its data cannot be "
                    "decrypted by anyone."
                )
            if not create:
                raise vault.VaultError(f"Vault {vault_id} has not been set up: nothing was backed up to it.")
            new_entry = VaultEntry(vault.new_key_id(), crypto.random_key(crypto.E_KEY_BYTES), _now())
            chosen = new_entry

            def add(current: ProfileSecrets) -> bool:
                nonlocal chosen
                if vault_id in current.vaults:  # another device set the vault up meanwhile: use its key
                    chosen = current.vaults[vault_id]
                    return False
                current.vaults[vault_id] = new_entry
                return True

            # E goes into the profile before A goes into the vault: a crash in between leaves an E
            # with no A yet, which the next run completes; never an A that no E can unwrap.
            self._update(add)
            entry = chosen
        if entry.key_id not in vault.key_ids(storage):
            if vault.holds_data(storage):
                raise vault.VaultKeyMissing(
                    f"Vault {vault_id} holds data but not the key object keys/{entry.key_id} the profile names."
                )
            return vault.Vault(
                storage, vault.keys_create(storage, vault_id=vault_id, e_key=entry.e_key, key_id=entry.key_id)
            )
        return vault.Vault(storage, vault.keys_open(storage, vault_id=vault_id, e_key=entry.e_key, key_id=entry.key_id))

    def rotate(self, storage: Storage, vault_id: str) -> tuple[str, str]:
        """Replace the vault's E: A is wrapped again under a new E; return (old key id, new key id).

        Order: the new key object first, then the profile, then the old key object goes. Stopped at
        any point, the vault still opens with whichever E the profile holds.
        """
        opened = self.open_vault(storage, vault_id, create=False)
        old_id = opened.keys.key_id
        new_entry = VaultEntry(vault.new_key_id(), crypto.random_key(crypto.E_KEY_BYTES), _now())
        vault.keys_rewrap(storage, opened.keys, e_key=new_entry.e_key, key_id=new_entry.key_id)

        def replace(current: ProfileSecrets) -> bool:
            if current.vaults.get(vault_id) is None or current.vaults[vault_id].key_id != old_id:
                raise vault.VaultError("Another device changed this vault's key meanwhile; try again.")
            current.vaults[vault_id] = new_entry
            return True

        self._update(replace)
        vault.keys_remove_except(storage, new_entry.key_id)
        return old_id, new_entry.key_id


def profile_rewrap(blob: bytes, *, old_key: bytes, new_key: bytes, account: AccountIdentity) -> bytes:
    """Return the profile sealed under a new password's P (for a password change on the device)."""
    secrets = profile_open(blob, profile_key=old_key, account=account)
    return profile_seal(secrets, profile_key=new_key, account=account)


def _now() -> str:
    return datetime.now(UTC).isoformat()
