"""The account password's two keys, L (login) and R (wrapping), and the login verifier the server keeps.

Standard library and bcrypt only: the reference agent imports this module without Django. Every
parameter here is part of the wire contract and is written down in docs/crypto.md; changing one
changes every key, so a change needs a new VERSION and a migration path.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata

import bcrypt

VERSION = 1
PBKDF2_HASH = "sha512"
PBKDF2_ITERATIONS = 210_000
KEY_BYTES = 24  # 192 bits each for L and R
SALT_PREFIX = b"backup-portal/v1/account-keys\x00"
BCRYPT_ROUNDS = 12


def normalise_username(username: str) -> str:
    """Return the canonical form of a backup account's username: NFKC, stripped, lower case."""
    return unicodedata.normalize("NFKC", username).strip().lower()


def account_salt(tenant_slug: str, username: str) -> bytes:
    """Return the repeatable salt of one account: SHA-512(prefix || tenant slug || 0x00 || username)."""
    material = SALT_PREFIX + tenant_slug.encode() + b"\x00" + normalise_username(username).encode()
    return hashlib.sha512(material).digest()


def derive_keys(tenant_slug: str, username: str, password: str) -> tuple[bytes, bytes]:
    """Return (L, R): the first and last 24 bytes of PBKDF2-HMAC-SHA512(password, salt, 210,000, 48)."""
    output = hashlib.pbkdf2_hmac(
        PBKDF2_HASH,
        unicodedata.normalize("NFKC", password).encode(),
        account_salt(tenant_slug, username),
        PBKDF2_ITERATIONS,
        dklen=2 * KEY_BYTES,
    )
    return output[:KEY_BYTES], output[KEY_BYTES:]


def login_verifier(l_key: bytes, *, rounds: int | None = None) -> str:
    """Return bcrypt(SHA-512(L)), the only thing the server stores about the password."""
    salt = bcrypt.gensalt(rounds or BCRYPT_ROUNDS)
    return bcrypt.hashpw(hashlib.sha512(l_key).digest(), salt).decode()


def login_verifier_matches(l_key: bytes, verifier: str) -> bool:
    """Return whether L matches a stored verifier (bcrypt compares in constant time)."""
    if len(l_key) != KEY_BYTES or not verifier:
        return False
    return bcrypt.checkpw(hashlib.sha512(l_key).digest(), verifier.encode())


def constant_time_equal(left: bytes, right: bytes) -> bool:
    return hmac.compare_digest(left, right)
