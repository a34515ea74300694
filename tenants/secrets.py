"""Secrets the server must hold itself, encrypted at rest: AES-256-GCM, with a key id in every token.

What is encrypted this way: authenticator (TOTP) seeds, storage vault credentials an admin enters,
and whatever another app stores through EncryptedTextField / EncryptedBinaryField or
secret_encrypt(). What is not, and why: passwords, API keys, device and invitation tokens are kept
as one-way hashes, which need no key; the account's profile secrets are ciphertext the server cannot
read anyway; SECRET_KEY, AUDIT_SIGNING_KEY and these keys themselves live in the environment or in
files, never in the database.

A token is text:

    "enc1:" key_id ":" base64url( nonce (12 random bytes) || AES-256-GCM ciphertext || tag (16 bytes) )

with the associated data "enc1:" key_id ":" || context, so neither the key id nor the place a value
belongs to (a model field names itself as context) can be changed without the tag failing.

Keys come from SECRETS_KEYS, "id=base64 key,id=base64 key,...": the first one encrypts, every one
decrypts. Without it (the embedded set-up) they come from a file, SECRETS_KEY_FILE (DATA_DIR/
secrets_keys by default), one "id=base64 key" per line, the first current; it is generated with
mode 0600 the first time a secret is stored, and the portal says so in its log and at start.
`manage.py rotate_secrets_key` adds a key and re-encrypts every stored value under it, row by row,
while the portal keeps running (docs/deployment.md, "Secrets at rest").
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.db import models

PREFIX = "enc1"
KEY_BYTES = 32
NONCE_BYTES = 12
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
TOKEN_PATTERN = re.compile(r"^enc1:([A-Za-z0-9_-]{1,32}):([A-Za-z0-9_-]+)$")

logger = logging.getLogger(__name__)


class SecretsConfigurationError(Exception):
    pass


class SecretDecryptionError(Exception):
    """A token could not be decrypted: unknown key id, or altered. The message never holds secret data."""


@dataclass(frozen=True)
class Keyring:
    """The keys that decrypt, in order; the first encrypts. `source` says where they came from."""

    keys: tuple[tuple[str, bytes], ...]
    source: str

    @property
    def current_id(self) -> str:
        return self.keys[0][0]

    def key(self, key_id: str) -> bytes | None:
        return next((key for found, key in self.keys if found == key_id), None)


def parse_keys(text: str, *, separator: str, source: str) -> Keyring:
    """Parse "id=base64 key" entries; raise SecretsConfigurationError, naming the source, if malformed."""
    entries: list[tuple[str, bytes]] = []
    for raw in text.split(separator):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        key_id, _, encoded = entry.partition("=")
        key_id = key_id.strip()
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if not KEY_ID_PATTERN.match(key_id) or len(key) != KEY_BYTES:
            raise SecretsConfigurationError(
                f"{source}: each entry must be <id>=<base64 of 32 bytes>, the id of up to 32 letters, digits, _ or -."
            )
        if any(found == key_id for found, _ in entries):
            raise SecretsConfigurationError(f"{source}: the key id {key_id} appears twice.")
        entries.append((key_id, key))
    if not entries:
        raise SecretsConfigurationError(f"{source} holds no key.")
    return Keyring(tuple(entries), source)


def key_generate() -> tuple[str, str]:
    """Return a new key as (key id, base64 of 32 random bytes); the id tells keys apart by date."""
    key_id = f"k{datetime.now(UTC):%Y%m%d}{secrets.token_hex(3)}"
    return key_id, base64.b64encode(os.urandom(KEY_BYTES)).decode()


def key_file_path() -> Path:
    return Path(settings.SECRETS_KEY_FILE)


def _write_key_file(path: Path, lines: list[str]) -> None:
    """Write the key file whole (temporary file, then rename), readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write("\n".join(lines) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


HEADER = [
    "# Keys that encrypt the portal's secrets at rest (tenants/secrets.py). The first line encrypts;",
    "# every line decrypts. Keep this file out of the database's backups, and never lose it.",
]


def key_file_ensure() -> bool:
    """Create the embedded key file if there is none; return whether it was created now."""
    path = key_file_path()
    if path.exists():
        return False
    key_id, key = key_generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return False
    with os.fdopen(descriptor, "w") as handle:
        handle.write("\n".join([*HEADER, f"{key_id}={key}"]) + "\n")
    logger.warning(
        "Generated the key for secrets at rest in %s (mode 0600). Set SECRETS_KEYS in production instead.", path
    )
    return True


def key_file_add(key_id: str, key: str) -> None:
    """Put a new key first in the key file, so that it encrypts from now on; the old ones still decrypt."""
    path = key_file_path()
    key_file_ensure()
    existing = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    _write_key_file(path, [*HEADER, f"{key_id}={key}", *existing])


def key_file_retire(keep: set[str]) -> list[str]:
    """Remove from the key file every key not in `keep`; return the ids removed."""
    path = key_file_path()
    kept: list[str] = []
    removed: list[str] = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        (kept if line.partition("=")[0].strip() in keep else removed).append(line)
    if removed:
        _write_key_file(path, [*HEADER, *kept])
    return [line.partition("=")[0].strip() for line in removed]


_cache: tuple[Any, Keyring] | None = None
_cache_lock = threading.Lock()


def keyring() -> Keyring:
    """Return the current keys: SECRETS_KEYS, or the key file (read again whenever it changed on disk,
    so a rotation run by `manage.py rotate_secrets_key` reaches running processes without a restart)."""
    global _cache
    configured = settings.SECRETS_KEYS
    if configured:
        signature: Any = ("env", configured)
    else:
        path = key_file_path()
        key_file_ensure()
        status = path.stat()
        signature = ("file", str(path), status.st_mtime_ns, status.st_size)
    with _cache_lock:
        if _cache is not None and _cache[0] == signature:
            return _cache[1]
        if configured:
            ring = parse_keys(configured, separator=",", source="SECRETS_KEYS")
        else:
            ring = parse_keys(key_file_path().read_text(), separator="\n", source=str(key_file_path()))
        _cache = (signature, ring)
        return ring


def keyring_describe() -> str:
    """Return one line saying where the secrets-at-rest keys come from (the demo prints it at start)."""
    if settings.SECRETS_KEYS:
        ring = keyring()
        return f"from SECRETS_KEYS ({len(ring.keys)} keys, current {ring.current_id})"
    created = key_file_ensure()
    ring = keyring()
    return f"from the key file {key_file_path()} (mode 0600, {'generated now' if created else 'kept'})" + (
        f", {len(ring.keys)} keys, current {ring.current_id}"
    )


def _aad(key_id: str, context: bytes) -> bytes:
    return f"{PREFIX}:{key_id}:".encode() + context


def secret_encrypt(plaintext: bytes, *, context: bytes = b"") -> str:
    """Return a token holding `plaintext` encrypted under the current key."""
    ring = keyring()
    key_id = ring.current_id
    key = ring.key(key_id)
    assert key is not None
    nonce = os.urandom(NONCE_BYTES)
    sealed = nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(key_id, context))
    return f"{PREFIX}:{key_id}:{base64.urlsafe_b64encode(sealed).decode().rstrip('=')}"


def token_key_id(token: str) -> str | None:
    """Return the id of the key a token was encrypted with, or None if it is not a token."""
    match = TOKEN_PATTERN.match(token)
    return match.group(1) if match else None


def is_token(value: str) -> bool:
    return TOKEN_PATTERN.match(value) is not None


def secret_decrypt(token: str, *, context: bytes = b"") -> bytes:
    """Return the plaintext of a token; raise SecretDecryptionError if it cannot be decrypted."""
    match = TOKEN_PATTERN.match(token)
    if match is None:
        raise SecretDecryptionError("Not an encrypted secret.")
    key_id, encoded = match.groups()
    key = keyring().key(key_id)
    if key is None:
        raise SecretDecryptionError(f"No key {key_id} among the secrets-at-rest keys ({keyring().source}).")
    try:
        sealed = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        if base64.urlsafe_b64encode(sealed).decode().rstrip("=") != encoded:
            raise ValueError("not the canonical encoding")  # no second spelling of one token
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _aad(key_id, context))
    except (InvalidTag, ValueError, binascii.Error):
        raise SecretDecryptionError(f"A secret encrypted under key {key_id} failed to decrypt (altered?).") from None


# --- Model fields ---------------------------------------------------------------------------


class _EncryptedField(models.TextField):  # type: ignore[type-arg]
    """A text column holding a token; the model sees the plaintext. Values cannot be searched for.

    The context of each value is "<app_label>.<model>.<field>", so a token copied into another
    column does not decrypt. An empty value is stored empty.
    """

    def context(self) -> bytes:
        return f"{self.model._meta.label_lower}.{self.attname}".encode()

    def _decode(self, raw: bytes) -> Any:
        raise NotImplementedError

    def _encode(self, value: Any) -> bytes:
        raise NotImplementedError

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> Any:
        if value is None or value == "":
            return self._decode(b"") if value == "" else None
        return self._decode(secret_decrypt(value, context=self.context()))

    def to_python(self, value: Any) -> Any:
        # A token (loaddata of what dumpdata wrote) is decrypted; anything else is the plaintext.
        if isinstance(value, str) and is_token(value):
            return self._decode(secret_decrypt(value, context=self.context()))
        return value

    def get_prep_value(self, value: Any) -> Any:
        if value is None:
            return None
        raw = self._encode(value)
        return secret_encrypt(raw, context=self.context()) if raw else ""

    def value_to_string(self, obj: models.Model) -> str:
        # Serialised (dumpdata) as the token, never as the plaintext.
        value = self.value_from_object(obj)
        return "" if value in (None, "", b"") else str(self.get_prep_value(value))


class EncryptedTextField(_EncryptedField):
    description = "Text, encrypted at rest"

    def _decode(self, raw: bytes) -> str:
        return raw.decode()

    def _encode(self, value: Any) -> bytes:
        return str(value).encode()


class EncryptedBinaryField(_EncryptedField):
    description = "Bytes, encrypted at rest"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("editable", False)
        super().__init__(*args, **kwargs)

    def _decode(self, raw: bytes) -> bytes:
        return raw

    def _encode(self, value: Any) -> bytes:
        return bytes(value)

    def to_python(self, value: Any) -> Any:
        if isinstance(value, memoryview | bytearray):
            return bytes(value)
        return super().to_python(value)


def encrypted_fields() -> Iterator[tuple[type[models.Model], _EncryptedField]]:
    """Yield every (model, field) that stores secrets at rest: what rotation must re-encrypt."""
    from django.apps import apps

    for model in apps.get_models():
        for field in model._meta.concrete_fields:
            if isinstance(field, _EncryptedField):
                yield model, field
