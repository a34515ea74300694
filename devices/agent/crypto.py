"""The vault's cryptography (docs/crypto.md): key derivation, sealing with AES-256-CTR + Poly1305, chunk ids.

Built from the `cryptography` package's primitives (AES in CTR mode, Poly1305, HKDF) and the standard
library's HMAC; nothing here implements a cipher or a MAC itself. Every constant is part of the
on-disk format, version 1: changing one makes every vault unreadable, so a change needs a new
FORMAT_VERSION and code that still reads version 1.

One sealed object is

    header     = MAGIC "BPE" || version (1 byte) || kind (1 byte) || nonce (24 random bytes)   29 bytes
    object     = header || ciphertext || tag (16 bytes)

sealed under a 256-bit key K like this:

    K_m        = HKDF-Expand-SHA256(PRK = K, info = "backup-portal/v1/message" || nonce, 32)
    keystream  = AES-256-CTR(K_m, initial counter block 0^128)
    poly_key   = keystream[0:32]                      the one-time Poly1305 key (blocks 0 and 1)
    ciphertext = plaintext XOR keystream[32:]         (from block 2 on)
    aad        = header || context
    tag        = Poly1305(poly_key, aad || pad16 || ciphertext || pad16 || le64(len aad) || le64(len ciphertext))

Every message gets its own AES key (and so its own Poly1305 key) from a fresh 192-bit random nonce,
so neither is ever used twice. `context` binds the object to its place: the vault id and the
object's own id (chunk id, snapshot id, key id), each length-prefixed, so that a valid object
copied to another name or another vault fails verification. No Django: the reference agent imports
this module.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from enum import IntEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, poly1305
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

FORMAT_VERSION = 1
MAGIC = b"BPE"
NONCE_BYTES = 24
TAG_BYTES = 16
HEADER_BYTES = len(MAGIC) + 2 + NONCE_BYTES
OVERHEAD_BYTES = HEADER_BYTES + TAG_BYTES
KEY_BYTES = 32
A_KEY_BYTES = 32  # the vault's data key A: 256 bits
E_KEY_BYTES = 16  # the vault's key-encryption key E: 128 bits
CHUNK_ID_BYTES = 32
# CTR's 128-bit counter never wraps within a message this size; chunks and manifests are far smaller.
MAX_MESSAGE_BYTES = 1 << 36
ZERO_COUNTER = bytes(16)
POLY_KEY_PAD = bytes(32)

INFO_PROFILE_KEY = b"backup-portal/v1/profile-key"
INFO_WRAP_KEY = b"backup-portal/v1/vault-key-wrap"
INFO_DATA_KEY = b"backup-portal/v1/vault-data"
INFO_CHUNK_ID_KEY = b"backup-portal/v1/chunk-id"
INFO_MESSAGE = b"backup-portal/v1/message"


class Kind(IntEnum):
    """What a sealed object holds; the kind is in the header and so under the tag."""

    CHUNK = 1
    MANIFEST = 2
    VAULT_KEY = 3
    PROFILE = 4


class CryptoError(Exception):
    pass


class IntegrityError(CryptoError):
    """A stored object failed verification: it was damaged or altered. Nothing of it was decrypted."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


# --- Keys -----------------------------------------------------------------------------------


def derive_key(input_key: bytes, info: bytes) -> bytes:
    """Return HKDF-SHA256(IKM = input_key, salt = none, info, 32 bytes): one purpose's key."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(input_key)


def profile_key(r_key: bytes) -> bytes:
    """Return P, the key that seals the account's profile secrets, from the wrapping key R."""
    return derive_key(r_key, INFO_PROFILE_KEY)


def wrap_key(e_key: bytes) -> bytes:
    """Return W, the key that seals A in the vault, from the vault's E."""
    return derive_key(e_key, INFO_WRAP_KEY)


def data_key(a_key: bytes) -> bytes:
    """Return D, the key that seals chunks and manifests, from the vault's A."""
    return derive_key(a_key, INFO_DATA_KEY)


def chunk_id_key(a_key: bytes) -> bytes:
    """Return I, the HMAC key of chunk ids, from the vault's A."""
    return derive_key(a_key, INFO_CHUNK_ID_KEY)


def message_key(sealing_key: bytes, nonce: bytes) -> bytes:
    """Return K_m, the AES-256 key of one message: HKDF-Expand(sealing key, info || nonce)."""
    return HKDFExpand(algorithm=hashes.SHA256(), length=KEY_BYTES, info=INFO_MESSAGE + nonce).derive(sealing_key)


def random_key(size: int) -> bytes:
    return os.urandom(size)


class ChunkIds:
    """Keyed chunk ids: HMAC-SHA256(I, plaintext), so an id reveals nothing about the content to
    anyone without the vault's key (unlike a plain content hash, which anyone could test a guess against)."""

    def __init__(self, id_key: bytes) -> None:
        self._base = hmac.new(id_key, digestmod=hashlib.sha256)

    def of(self, data: bytes | memoryview) -> str:
        mac = self._base.copy()
        mac.update(data)
        return mac.hexdigest()


# --- Sealing --------------------------------------------------------------------------------


def encode_context(fields: Sequence[str]) -> bytes:
    """Return the associated data naming an object: each field as le16(length) || UTF-8."""
    parts = []
    for field in fields:
        raw = field.encode()
        if len(raw) > 0xFFFF:
            raise ValueError("a context field is longer than 65,535 bytes")
        parts.append(len(raw).to_bytes(2, "little") + raw)
    return b"".join(parts)


def _pad16(length: int) -> bytes:
    return bytes(-length % 16)


def _mac(poly_key: bytes, aad: bytes, ciphertext: bytes | memoryview) -> poly1305.Poly1305:
    mac = poly1305.Poly1305(poly_key)
    mac.update(aad + _pad16(len(aad)))
    mac.update(ciphertext)
    mac.update(_pad16(len(ciphertext)) + len(aad).to_bytes(8, "little") + len(ciphertext).to_bytes(8, "little"))
    return mac


def header(kind: Kind, nonce: bytes) -> bytes:
    return MAGIC + bytes((FORMAT_VERSION, int(kind))) + nonce


def seal_parts(
    key: bytes,
    kind: Kind,
    context: Sequence[str],
    plaintext: bytes | memoryview,
    *,
    nonce: bytes | None = None,
    buffer: bytearray | None = None,
) -> tuple[bytes, memoryview, bytes]:
    """Return (header, ciphertext, tag) of a sealed object; joined in that order they are the object.

    With `buffer` (at least len(plaintext) + 15 bytes) the ciphertext is written into it instead of
    a new allocation: the backup reuses one buffer per worker. `nonce` is for known-answer tests only.
    """
    if len(plaintext) > MAX_MESSAGE_BYTES:
        raise ValueError("message too long")
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != NONCE_BYTES or len(key) != KEY_BYTES:
        raise ValueError("wrong key or nonce size")
    head = header(kind, nonce)
    stream = Cipher(algorithms.AES(message_key(key, nonce)), modes.CTR(ZERO_COUNTER)).encryptor()
    poly_key = stream.update(POLY_KEY_PAD)
    if buffer is None:
        ciphertext = memoryview(stream.update(plaintext))
    else:
        written = stream.update_into(plaintext, buffer)
        ciphertext = memoryview(buffer)[:written]
    tag = _mac(poly_key, head + encode_context(context), ciphertext).finalize()
    return head, ciphertext, tag


def seal(
    key: bytes, kind: Kind, context: Sequence[str], plaintext: bytes | memoryview, *, nonce: bytes | None = None
) -> bytes:
    """Return the sealed object (header || ciphertext || tag) of `plaintext`."""
    head, ciphertext, tag = seal_parts(key, kind, context, plaintext, nonce=nonce)
    return b"".join((head, ciphertext, tag))


def open_sealed(key: bytes, kind: Kind, context: Sequence[str], sealed: bytes | memoryview, *, name: str) -> bytes:
    """Verify a sealed object and return its plaintext; raise IntegrityError naming `name` otherwise.

    The tag is checked (in constant time, by Poly1305's verify) before anything is decrypted, so an
    altered object yields no plaintext at all.
    """
    view = memoryview(sealed)
    if len(view) < OVERHEAD_BYTES:
        raise IntegrityError(name, "too short to be a sealed object")
    head = bytes(view[:HEADER_BYTES])
    if head[: len(MAGIC)] != MAGIC:
        raise IntegrityError(name, "not a sealed object (wrong magic bytes)")
    version, found_kind = head[len(MAGIC)], head[len(MAGIC) + 1]
    if version != FORMAT_VERSION:
        raise IntegrityError(name, f"format version {version} is not one this agent reads (it reads {FORMAT_VERSION})")
    if found_kind != int(kind):
        raise IntegrityError(name, f"holds a {_kind_name(found_kind)} where a {kind.name.lower()} belongs")
    nonce = head[len(MAGIC) + 2 :]
    ciphertext, tag = view[HEADER_BYTES:-TAG_BYTES], bytes(view[-TAG_BYTES:])
    stream = Cipher(algorithms.AES(message_key(key, nonce)), modes.CTR(ZERO_COUNTER)).decryptor()
    poly_key = stream.update(POLY_KEY_PAD)
    try:
        _mac(poly_key, head + encode_context(context), ciphertext).verify(tag)
    except InvalidSignature:
        raise IntegrityError(name, "the authentication tag does not match (damaged, altered or moved)") from None
    return stream.update(ciphertext) + stream.finalize()


def _kind_name(value: int) -> str:
    try:
        return Kind(value).name.lower()
    except ValueError:
        return f"object of unknown kind {value}"


def constant_time_equal(left: bytes | str, right: bytes | str) -> bool:
    if isinstance(left, str) and isinstance(right, str):
        return hmac.compare_digest(left.encode(), right.encode())
    assert isinstance(left, bytes) and isinstance(right, bytes)
    return hmac.compare_digest(left, right)
