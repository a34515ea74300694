"""Known answers for the L/R derivation. The vectors below are also in docs/crypto.md; they were
computed with hashlib alone, and the first test recomputes them that way, apart from devices.keys."""

from __future__ import annotations

import hashlib
import unicodedata

import bcrypt
import pytest

from devices import keys

VECTORS = [
    {
        "tenant": "acme",
        "username": "alice",
        "password": "correct horse battery staple",
        "L": "b8adc201645851d88071471d5a7971f2b682aebd09ee81bd",
        "R": "351f05c394d398f6652896c1aa1726065ae50bc5a29ee43d",
    },
    {
        "tenant": "globex",
        "username": "Alice",
        "password": "pässwörd",
        "L": "330463eceb1e2aec94a032ac289c3d2d580936d0fafb8750",
        "R": "0fb7e3583b393985c9d4ef0f54eb4da52bea0263a32934ef",
    },
]


def _independent_derivation(tenant: str, username: str, password: str) -> bytes:
    canonical = unicodedata.normalize("NFKC", username).strip().lower()
    salt = hashlib.sha512(
        b"backup-portal/v1/account-keys\x00" + tenant.encode() + b"\x00" + canonical.encode()
    ).digest()
    return hashlib.pbkdf2_hmac("sha512", unicodedata.normalize("NFKC", password).encode(), salt, 210_000, 48)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda vector: vector["tenant"])
def test_it_matches_the_published_vectors(vector):
    independent = _independent_derivation(vector["tenant"], vector["username"], vector["password"])
    assert independent.hex() == vector["L"] + vector["R"]
    l_key, r_key = keys.derive_keys(vector["tenant"], vector["username"], vector["password"])
    assert (l_key.hex(), r_key.hex()) == (vector["L"], vector["R"])


def test_it_makes_192_bit_keys_that_differ_per_tenant():
    acme_l, acme_r = keys.derive_keys("acme", "alice", "same password")
    globex_l, _ = keys.derive_keys("globex", "alice", "same password")
    assert len(acme_l) == len(acme_r) == 24 and acme_l != acme_r and acme_l != globex_l


def test_it_matches_pbkdf2_hmac_sha512_rfc_style_vector():
    # PBKDF2-HMAC-SHA512("password", "salt", 1 iteration, 64 bytes), a widely published vector.
    expected = (
        "867f70cf1ade02cff3752599a3a53dc4af34c7a669815ae5d513554e1c8cf252"
        "c02d470a285a0501bad999bfe943c08f050235d7d68b1da55e63f73b60a57fce"
    )
    assert hashlib.pbkdf2_hmac("sha512", b"password", b"salt", 1, 64).hex() == expected


def test_it_verifies_l_against_a_real_cost_bcrypt_verifier():
    l_key = bytes.fromhex(VECTORS[0]["L"])
    verifier = keys.login_verifier(l_key, rounds=12)
    assert verifier.startswith("$2b$12$")
    assert bcrypt.checkpw(hashlib.sha512(l_key).digest(), verifier.encode())
    assert keys.login_verifier_matches(l_key, verifier)
    assert not keys.login_verifier_matches(bytes(24), verifier)
    assert not keys.login_verifier_matches(l_key[:-1], verifier)
