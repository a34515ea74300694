"""Known answers and properties of the vault's cryptography (devices.agent.crypto, docs/crypto.md).

Three kinds of proof:

- published vectors for every primitive the composition stands on (PBKDF2-HMAC-SHA512, AES-256-CTR
  from NIST SP 800-38A, Poly1305 from RFC 8439, HKDF from RFC 5869, HMAC-SHA256 from RFC 4231);
- vectors for our own composition, written in docs/crypto.md, recomputed here by an independent
  implementation from those primitives alone (not devices.agent.crypto), and checked against the
  module under test both ways;
- hypothesis properties: any bytes round-trip, and any single-bit change is rejected.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import poly1305
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.agent import crypto

DOC = Path(__file__).resolve().parents[2] / "docs" / "crypto.md"

# --- Published vectors ----------------------------------------------------------------------

# PBKDF2-HMAC-SHA512, 64-byte output: the widely published companions of RFC 6070's SHA-1 vectors.
PBKDF2_SHA512 = [
    (
        b"password",
        b"salt",
        1,
        "867f70cf1ade02cff3752599a3a53dc4af34c7a669815ae5d513554e1c8cf252"
        "c02d470a285a0501bad999bfe943c08f050235d7d68b1da55e63f73b60a57fce",
    ),
    (
        b"password",
        b"salt",
        2,
        "e1d9c16aa681708a45f5c7c4e215ceb66e011a2e9f0040713f18aefdb866d53c"
        "f76cab2868a39b9f7840edce4fef5a82be67335c77a6068e04112754f27ccf4e",
    ),
    (
        b"password",
        b"salt",
        4096,
        "d197b1b33db0143e018b12f3d1d1479e6cdebdcc97c5c0f87f6902e072f457b5"
        "143f30602641b3d55cd335988cb36b84376060ecd532e039b742a239434af2d5",
    ),
    (
        b"passwordPASSWORDpassword",
        b"saltSALTsaltSALTsaltSALTsaltSALTsalt",
        4096,
        "8c0511f4c6e597c6ac6315d8f0362e225f3c501495ba23b868c005174dc4ee71"
        "115b59f9e60cd9532fa33e0f75aefe30225c583a186cd82bd4daea9724a3d3b8",
    ),
]


@pytest.mark.parametrize(("password", "salt", "iterations", "expected"), PBKDF2_SHA512)
def test_it_matches_the_pbkdf2_hmac_sha512_vectors(password, salt, iterations, expected):
    assert hashlib.pbkdf2_hmac("sha512", password, salt, iterations, 64).hex() == expected


# NIST SP 800-38A, F.5.5 (CTR-AES256.Encrypt) and F.5.6 (CTR-AES256.Decrypt).
SP800_38A_KEY = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
SP800_38A_COUNTER = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
SP800_38A_PLAINTEXT = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172a"
    "ae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52ef"
    "f69f2445df4f9b17ad2b417be66c3710"
)
SP800_38A_CIPHERTEXT = bytes.fromhex(
    "601ec313775789a5b7a7f504bbf3d228"
    "f443e3ca4d62b59aca84e990cacaf5c5"
    "2b0930daa23de94ce87017ba2d84988d"
    "dfc9c58db67aada613c2dd08457941a6"
)


def test_it_matches_nist_sp_800_38a_f_5_5_ctr_aes256_encrypt():
    encryptor = Cipher(algorithms.AES(SP800_38A_KEY), modes.CTR(SP800_38A_COUNTER)).encryptor()
    assert encryptor.update(SP800_38A_PLAINTEXT) + encryptor.finalize() == SP800_38A_CIPHERTEXT


def test_it_matches_nist_sp_800_38a_f_5_6_ctr_aes256_decrypt():
    decryptor = Cipher(algorithms.AES(SP800_38A_KEY), modes.CTR(SP800_38A_COUNTER)).decryptor()
    assert decryptor.update(SP800_38A_CIPHERTEXT) + decryptor.finalize() == SP800_38A_PLAINTEXT


def test_it_matches_nist_sp_800_38a_block_by_block_as_the_sealing_code_feeds_it():
    # The sealing code calls update() twice (the Poly1305 key, then the data): the counter must run on.
    encryptor = Cipher(algorithms.AES(SP800_38A_KEY), modes.CTR(SP800_38A_COUNTER)).encryptor()
    parts = [encryptor.update(SP800_38A_PLAINTEXT[:32]), encryptor.update(SP800_38A_PLAINTEXT[32:])]
    assert b"".join(parts) == SP800_38A_CIPHERTEXT


# RFC 8439, section 2.5.2.
RFC8439_KEY = bytes.fromhex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
RFC8439_MESSAGE = b"Cryptographic Forum Research Group"
RFC8439_TAG = bytes.fromhex("a8061dc1305136c6c22b8baf0c0127a9")


def test_it_matches_the_rfc_8439_poly1305_vector():
    assert poly1305.Poly1305.generate_tag(RFC8439_KEY, RFC8439_MESSAGE) == RFC8439_TAG
    poly1305.Poly1305.verify_tag(RFC8439_KEY, RFC8439_MESSAGE, RFC8439_TAG)


# RFC 5869, test cases 1 and 3 (HKDF-SHA256), and RFC 4231 test case 2 (HMAC-SHA256).
def _hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 written out with the standard library's HMAC: the independent implementation."""
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    return _hkdf_expand(prk, info, length)


def _hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    output, block, counter = b"", b"", 1
    while len(output) < length:
        block = hmac.new(prk, block + info + bytes((counter,)), hashlib.sha256).digest()
        output += block
        counter += 1
    return output[:length]


def test_it_matches_the_rfc_5869_hkdf_vectors():
    ikm = bytes([0x0B] * 22)
    case_1 = _hkdf(ikm, bytes(range(13)), bytes(range(0xF0, 0xFA)), 42)
    assert case_1.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
    case_3 = _hkdf(ikm, b"", b"", 42)
    assert case_3.hex() == "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    # The module's derivation (salt left out, as RFC 5869 allows) is the same function.
    assert crypto.derive_key(ikm, b"") == case_3[:32]


def test_it_matches_the_rfc_4231_hmac_sha256_vector():
    assert crypto.ChunkIds(b"Jefe").of(b"what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


# --- Our composition, recomputed from primitives alone ---------------------------------------

INFO = {
    "profile": b"backup-portal/v1/profile-key",
    "wrap": b"backup-portal/v1/vault-key-wrap",
    "data": b"backup-portal/v1/vault-data",
    "chunk_id": b"backup-portal/v1/chunk-id",
    "message": b"backup-portal/v1/message",
}
KINDS = {"chunk": 1, "manifest": 2, "vault_key": 3, "profile": 4}


def independent_seal(key: bytes, kind: int, context: list[str], plaintext: bytes, nonce: bytes) -> bytes:
    """The format of docs/crypto.md, implemented again from the primitives, apart from the module."""
    header = b"BPE" + bytes((1, kind)) + nonce
    message_key = _hkdf_expand(key, INFO["message"] + nonce, 32)
    keystream = Cipher(algorithms.AES(message_key), modes.CTR(bytes(16))).encryptor()
    one_time_key = keystream.update(bytes(32))
    ciphertext = keystream.update(plaintext) + keystream.finalize()
    aad = header + b"".join(len(field.encode()).to_bytes(2, "little") + field.encode() for field in context)

    def pad(data: bytes) -> bytes:
        return bytes(-len(data) % 16)

    mac_data = (
        aad
        + pad(aad)
        + ciphertext
        + pad(ciphertext)
        + len(aad).to_bytes(8, "little")
        + len(ciphertext).to_bytes(8, "little")
    )
    return header + ciphertext + poly1305.Poly1305.generate_tag(one_time_key, mac_data)


A_KEY = bytes(range(32))
E_KEY = bytes(range(0xA0, 0xB0))
R_KEY = bytes.fromhex("351f05c394d398f6652896c1aa1726065ae50bc5a29ee43d")  # R of acme/alice, docs/crypto.md
KEY_ID = "00112233445566778899aabbccddeeff"
CHUNK_PLAINTEXT = b"The quick brown fox jumps over the lazy dog."
PROFILE_PLAINTEXT = (
    b'{"format":1,"vaults":{"vault-1":{"created_at":"","e_key":"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",'
    b'"key_id":"00112233445566778899aabbccddeeff"}}}'
)

DERIVED = {
    "D": "c77081b0128a4dacb82c3d0e18782877f8db0b9ba2392e2bff0212934cd3f605",
    "I": "4a41e3d747dd4b0bf7b2f060109675a618adf3a82c5e4cd6d1fbff79378183f3",
    "W": "6c80a65c586c0f95899178697b43c8afb70ad66f13ddf1a526a9ba7c824aa631",
    "P": "2c983e9b1262d39cd2f339311feb17201ff614b09a93a4ff9c964aa831025b8c",
}
CHUNK_ID = "ef39f45a37eb7b9ea79ea6f1b889d30906867864e09831d6bbeb495f8c8a504e"
MESSAGE_KEY_1 = "5e4296811c860cfdacf462771285a6145f6a31d56a353165734833c1a7e8d1ed"

COMPOSITION = [
    {
        "name": "chunk",
        "key": "D",
        "kind": "chunk",
        "context": ["vault-1", CHUNK_ID],
        "plaintext": CHUNK_PLAINTEXT,
        "nonce": bytes(range(0x40, 0x58)),
        "sealed": "4250450101404142434445464748494a4b4c4d4e4f5051525354555657"
        "88c037c4f08b8d3e744539cd06abd96a61f47860f306c3f21ac28ac7b5ce87aea6746617cc0707fc5690fc7d0d"
        "7695ab1553dce5cf7d076ee4e3c839",
    },
    {
        "name": "vault key (A wrapped by E)",
        "key": "W",
        "kind": "vault_key",
        "context": ["vault-1", KEY_ID],
        "plaintext": A_KEY,
        "nonce": bytes(range(0x60, 0x78)),
        "sealed": "4250450103606162636465666768696a6b6c6d6e6f7071727374757677"
        "1a858f831ef45164cf50ac108b71210ab4d03b9b29c4cf8f4801e22e239b831d2a92ed8029bccc7c0d7357193e12d42b",
    },
    {
        "name": "profile secrets (E wrapped by P)",
        "key": "P",
        "kind": "profile",
        "context": ["acme", "alice"],
        "plaintext": PROFILE_PLAINTEXT,
        "nonce": bytes(range(0x80, 0x98)),
        "sealed": "4250450104808182838485868788898a8b8c8d8e8f9091929394959697"
        "7456b22d877ade611195d8d5708cf087a6f6ed2a0e06b8135bce14174ff26567af89a38f9552ee38a0780501e141"
        "bdb4b9509a87d5f937b48c1010079022a82ec3b50190dc8cd5654efe7ea86346761ef0b6c2c0a5fb9f4585e57c5c"
        "30b7cfd32d04d270c1a852f2f8b63d7338b9df8e23a6defb2e2bb710450f7a4d2c0a8be90025b00dc86e34675f11"
        "016d3cc365ca1e5afcbe918e7852b9f1",
    },
    {
        "name": "empty manifest",
        "key": "D",
        "kind": "manifest",
        "context": ["vault-1", "20261201T120000Z-00000000"],
        "plaintext": b"",
        "nonce": bytes(range(0x40, 0x58)),
        "sealed": "4250450102404142434445464748494a4b4c4d4e4f50515253545556578cf7e68b72d0d8ff2678fb34c127e221",
    },
]


def independent_keys() -> dict[str, bytes]:
    return {
        "D": _hkdf(A_KEY, b"", INFO["data"], 32),
        "I": _hkdf(A_KEY, b"", INFO["chunk_id"], 32),
        "W": _hkdf(E_KEY, b"", INFO["wrap"], 32),
        "P": _hkdf(R_KEY, b"", INFO["profile"], 32),
    }


def test_it_derives_the_documented_keys_independently_and_through_the_module():
    derived = independent_keys()
    assert {name: key.hex() for name, key in derived.items()} == DERIVED
    module = {
        "D": crypto.data_key(A_KEY),
        "I": crypto.chunk_id_key(A_KEY),
        "W": crypto.wrap_key(E_KEY),
        "P": crypto.profile_key(R_KEY),
    }
    assert module == derived
    assert hmac.new(derived["I"], CHUNK_PLAINTEXT, hashlib.sha256).hexdigest() == CHUNK_ID
    assert crypto.ChunkIds(module["I"]).of(CHUNK_PLAINTEXT) == CHUNK_ID
    assert crypto.message_key(module["D"], bytes(range(0x40, 0x58))).hex() == MESSAGE_KEY_1
    assert _hkdf_expand(derived["D"], INFO["message"] + bytes(range(0x40, 0x58)), 32).hex() == MESSAGE_KEY_1


@pytest.mark.parametrize("vector", COMPOSITION, ids=lambda vector: vector["name"])
def test_it_matches_the_composition_vectors(vector):
    key = independent_keys()[vector["key"]]
    independent = independent_seal(key, KINDS[vector["kind"]], vector["context"], vector["plaintext"], vector["nonce"])
    assert independent.hex() == vector["sealed"]
    kind = crypto.Kind(KINDS[vector["kind"]])
    sealed = crypto.seal(key, kind, vector["context"], vector["plaintext"], nonce=vector["nonce"])
    assert sealed == independent
    assert crypto.open_sealed(key, kind, vector["context"], sealed, name="vector") == vector["plaintext"]


def test_it_keeps_docs_crypto_md_in_step_with_these_vectors():
    """The vectors above are the ones docs/crypto.md publishes (hex may be wrapped there)."""
    text = re.sub(r"[\s`|]", "", DOC.read_text())
    for value in [*DERIVED.values(), CHUNK_ID, MESSAGE_KEY_1, *(vector["sealed"] for vector in COMPOSITION)]:
        assert value in text, f"{value[:16]}... is not in docs/crypto.md"


# --- Properties -----------------------------------------------------------------------------

KEY = bytes(range(100, 132))
contexts = st.lists(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40), max_size=3)
kinds = st.sampled_from(list(crypto.Kind))


@settings(max_examples=200, deadline=None)
@given(plaintext=st.binary(max_size=4096), context=contexts, kind=kinds)
def test_it_round_trips_any_bytes(plaintext, context, kind):
    sealed = crypto.seal(KEY, kind, context, plaintext)
    assert len(sealed) == len(plaintext) + crypto.OVERHEAD_BYTES
    assert crypto.open_sealed(KEY, kind, context, sealed, name="x") == plaintext


@settings(max_examples=50, deadline=None)
@given(size=st.sampled_from([0, 1, 15, 16, 17, 31, 32, 33, 4095, 65536, 1 << 20, (1 << 20) + 7]))
def test_it_round_trips_the_sizes_a_backup_produces(size):
    plaintext = bytes(index % 251 for index in range(size))
    buffer = bytearray(size + 16)
    head, ciphertext, tag = crypto.seal_parts(KEY, crypto.Kind.CHUNK, ["v", "c"], plaintext, buffer=buffer)
    sealed = head + bytes(ciphertext) + tag
    assert crypto.open_sealed(KEY, crypto.Kind.CHUNK, ["v", "c"], sealed, name="x") == plaintext


@settings(max_examples=300, deadline=None)
@given(plaintext=st.binary(max_size=300), context=contexts, data=st.data())
def test_it_rejects_any_single_bit_change_to_the_object(plaintext, context, data):
    """Header (magic, version, kind, nonce), ciphertext and tag: every bit is covered."""
    sealed = bytearray(crypto.seal(KEY, crypto.Kind.CHUNK, context, plaintext))
    bit = data.draw(st.integers(min_value=0, max_value=8 * len(sealed) - 1))
    sealed[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(crypto.IntegrityError) as raised:
        crypto.open_sealed(KEY, crypto.Kind.CHUNK, context, bytes(sealed), name="chunks/ab/abc")
    assert raised.value.name == "chunks/ab/abc"


@settings(max_examples=300, deadline=None)
@given(
    plaintext=st.binary(max_size=300),
    context=st.lists(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=40), min_size=1, max_size=3
    ),
    data=st.data(),
)
def test_it_rejects_any_single_bit_change_to_the_associated_data(plaintext, context, data):
    sealed = crypto.seal(KEY, crypto.Kind.CHUNK, context, plaintext)
    field = data.draw(st.integers(min_value=0, max_value=len(context) - 1))
    position = data.draw(st.integers(min_value=0, max_value=len(context[field]) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=6))  # stays ASCII: the field is still text
    changed = list(context)
    characters = list(changed[field])
    characters[position] = chr(ord(characters[position]) ^ (1 << bit))
    changed[field] = "".join(characters)
    with pytest.raises(crypto.IntegrityError):
        crypto.open_sealed(KEY, crypto.Kind.CHUNK, changed, sealed, name="x")


@settings(max_examples=100, deadline=None)
@given(plaintext=st.binary(max_size=300), cut=st.integers(min_value=1, max_value=400))
def test_it_rejects_a_truncated_or_extended_object(plaintext, cut):
    sealed = crypto.seal(KEY, crypto.Kind.CHUNK, ["v"], plaintext)
    for changed in (sealed[: max(0, len(sealed) - cut)], sealed + bytes(cut)):
        with pytest.raises(crypto.IntegrityError):
            crypto.open_sealed(KEY, crypto.Kind.CHUNK, ["v"], changed, name="x")


def test_it_rejects_another_kind_another_key_and_a_moved_object():
    sealed = crypto.seal(KEY, crypto.Kind.CHUNK, ["vault-1", "a"], b"data")
    for kind, key, context in [
        (crypto.Kind.MANIFEST, KEY, ["vault-1", "a"]),
        (crypto.Kind.CHUNK, bytes(32), ["vault-1", "a"]),
        (crypto.Kind.CHUNK, KEY, ["vault-1", "b"]),  # the same object under another chunk's name
        (crypto.Kind.CHUNK, KEY, ["vault-2", "a"]),  # or in another vault
        (crypto.Kind.CHUNK, KEY, ["vault-1a", ""]),  # fields are length-prefixed: no shifting bytes between them
    ]:
        with pytest.raises(crypto.IntegrityError):
            crypto.open_sealed(key, kind, context, sealed, name="x")


def _one_time_key(key: bytes, sealed: bytes) -> bytes:
    nonce = sealed[5:29]
    stream = Cipher(algorithms.AES(_hkdf_expand(key, INFO["message"] + nonce, 32)), modes.CTR(bytes(16))).encryptor()
    return stream.update(bytes(32))


def test_it_never_reuses_a_nonce_a_message_key_or_a_poly1305_key():
    sealed = [crypto.seal(KEY, crypto.Kind.CHUNK, ["v", "c"], b"the same plaintext") for _ in range(2000)]
    assert len({object_[5:29] for object_ in sealed}) == len(sealed)
    assert len({_one_time_key(KEY, object_) for object_ in sealed}) == len(sealed)
    assert len({object_[29:-16] for object_ in sealed}) == len(sealed)  # and so no ciphertext repeats


def test_it_verifies_before_it_decrypts(monkeypatch):
    """A forged object yields no plaintext at all: decryption is never reached."""
    sealed = bytearray(crypto.seal(KEY, crypto.Kind.CHUNK, ["v"], b"secret" * 100))
    sealed[-1] ^= 1
    fed: list[int] = []
    real = Cipher.decryptor

    def spying_decryptor(self):
        context = real(self)

        class Spy:
            def update(self, data):
                fed.append(len(data))
                return context.update(data)

            def finalize(self):
                return context.finalize()

        return Spy()

    monkeypatch.setattr(Cipher, "decryptor", spying_decryptor)
    with pytest.raises(crypto.IntegrityError):
        crypto.open_sealed(KEY, crypto.Kind.CHUNK, ["v"], bytes(sealed), name="x")
    assert fed == [32]  # only the one-time key's two blocks
