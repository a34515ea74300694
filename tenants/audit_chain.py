"""The tamper-evident audit log: hash chains, signed digests and their verification.

Each tenant's audit events form one chain and platform-level events another. Every row stores

    row_hash = SHA-256( bytes.fromhex(previous_hash) || canonical_encoding(row) )

with previous_hash = 64 zeros for the first row. canonical_encoding (documented in docs/audit.md)
is UTF-8 JSON with sorted keys and no spaces. Since encoding version 2 the personal fields (who
acted, from where, the before/after values) enter the hash only as salted digests stored beside
them, so a GDPR erasure can blank those fields and drop their salts while the chain still verifies.
A periodic task signs each chain's head with an Ed25519 key that lives outside the database;
`manage.py verify_audit` recomputes every chain and checks it against those signatures, naming the
first row that was modified, deleted or inserted.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from portal import rows
from tenants.models import AuditChainHead, AuditDigest, AuditEvent

GENESIS = "0" * 64
PLATFORM_CHAIN = "platform"
# Version 1 hashed every field in plain; rows written before version 2 keep verifying that way.
HASHED_FIELDS_V1 = (
    "chain",
    "sequence",
    "tenant_id",
    "actor_id",
    "actor_label",
    "actor_role",
    "action",
    "target_type",
    "target_id",
    "ip_address",
    "user_agent",
    "before",
    "after",
    "created_at",
)
# Fields that can name a person: hashed through a salted digest (version 2), erasable.
PERSONAL_FIELDS = ("actor_label", "ip_address", "user_agent", "before", "after")
HASHED_FIELDS = tuple(name for name in HASHED_FIELDS_V1 if name not in PERSONAL_FIELDS)
CURRENT_VERSION = 2
SALT_BYTES = 16


def chain_name(tenant_id: int | None) -> str:
    return PLATFORM_CHAIN if tenant_id is None else f"tenant:{tenant_id}"


def normalise_ip(value: str | None) -> str | None:
    """Return an address as the database will give it back (IPv6 compressed), so hashes agree."""
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def personal_digest(salt_hex: str, name: str, value: Any) -> str:
    """Return SHA-256(salt || name || 0x00 || compact JSON of value): one personal field's commitment.

    The salt is random per field and erased with the value, so the digest left behind cannot be
    matched against guesses (an IPv4 address has only 2^32 of them)."""
    return hashlib.sha256(bytes.fromhex(salt_hex) + name.encode() + b"\x00" + _compact(value).encode()).hexdigest()


def personal_seal(event: AuditEvent) -> None:
    """Give a new event a salt and a digest per personal field (encoding version 2)."""
    event.hash_version = CURRENT_VERSION
    event.personal_salts = {name: secrets.token_hex(SALT_BYTES) for name in PERSONAL_FIELDS}
    event.personal_digests = {
        name: personal_digest(event.personal_salts[name], name, getattr(event, name)) for name in PERSONAL_FIELDS
    }


def canonical_encoding(event: AuditEvent) -> bytes:
    """Return the bytes a row's hash covers: its fields as sorted, compact UTF-8 JSON.

    Version 2 (current) replaces the personal fields by their stored digests under "personal";
    version 1 rows carry every field in plain."""
    if event.hash_version == 1:
        document: dict[str, Any] = {name: getattr(event, name) for name in HASHED_FIELDS_V1}
    else:
        document = {name: getattr(event, name) for name in HASHED_FIELDS}
        document["hash_version"] = event.hash_version
        document["personal"] = {name: event.personal_digests.get(name) for name in PERSONAL_FIELDS}
    document["created_at"] = _timestamp(event.created_at)
    return _compact(document).encode()


def personal_fields_check(event: AuditEvent) -> list[str]:
    """Return the personal fields whose value no longer matches its digest (erased fields excepted)."""
    if event.hash_version == 1:
        return []
    return [
        name
        for name in PERSONAL_FIELDS
        if name in event.personal_salts
        and personal_digest(event.personal_salts[name], name, getattr(event, name)) != event.personal_digests.get(name)
    ]


def link_hash(previous_hash: str, event: AuditEvent) -> str:
    return hashlib.sha256(bytes.fromhex(previous_hash) + canonical_encoding(event)).hexdigest()


def chain_append(events: list[AuditEvent]) -> list[AuditEvent]:
    """Link new, unsaved events of one chain to its head and save them; the caller's transaction
    holds the head's row lock until it commits, so concurrent writers queue instead of forking."""
    if not events:
        return events
    chain = events[0].chain
    assert transaction.get_connection().in_atomic_block, "audit events are written inside a transaction"
    head = _head_locked(chain)
    if head is None:  # the chain's first event: create its head, racing writers agree on one row
        AuditChainHead.objects.bulk_create(
            [AuditChainHead(chain=chain, sequence=0, head_hash=GENESIS)], ignore_conflicts=True
        )
        head = _head_locked(chain)
        assert head is not None
    head_id, sequence, head_hash = head
    for event in events:
        personal_seal(event)
        sequence += 1
        event.sequence, event.previous_hash = sequence, head_hash
        event.row_hash = head_hash = link_hash(event.previous_hash, event)
    if len(events) == 1:
        rows.insert(events[0])  # one row on every audited write: no compiled insert
    else:
        AuditEvent.objects.bulk_create(events, batch_size=1000)
    with connection.cursor() as cursor:
        cursor.execute(_HEAD_MOVE_SQL, [sequence, head_hash, head_id])
    return events


# The head's lock and move are two short statements on every audited write; written out, they
# skip compiling two ORM queries each time. SQLite has no FOR UPDATE: its writers take turns anyway.
_HEAD_SQL = "SELECT id, sequence, head_hash FROM tenants_auditchainhead WHERE chain = %s"
_HEAD_MOVE_SQL = "UPDATE tenants_auditchainhead SET sequence = %s, head_hash = %s WHERE id = %s"


def _head_locked(chain: str) -> tuple[int, int, str] | None:
    """Lock the chain's head row and return (id, sequence, head hash), or None if it has none."""
    sql = _HEAD_SQL + (" FOR UPDATE" if connection.features.has_select_for_update else "")
    with connection.cursor() as cursor:
        cursor.execute(sql, [chain])
        row = cursor.fetchone()
    return (row[0], row[1], row[2]) if row else None


def personal_fields_erase(events: list[AuditEvent], *, replacements: dict[str, Any]) -> int:
    """Replace personal fields of stored events and drop those fields' salts; return how many rows.

    The digests stay, so each row's hash (and the chain) still verifies; without the salt nobody can
    test a guess against a digest. This is the only update audit rows ever receive."""
    unknown = set(replacements) - set(PERSONAL_FIELDS)
    if unknown:
        raise ValueError(f"Only personal fields can be erased, not {sorted(unknown)}")
    now = timezone.now()
    for event in events:
        for name, value in replacements.items():
            setattr(event, name, value)
            event.personal_salts.pop(name, None)
        event.personal_erased_at = now
    AuditEvent.objects.bulk_update(events, [*replacements, "personal_salts", "personal_erased_at"], batch_size=500)
    return len(events)


# --- Signing --------------------------------------------------------------------------------


def _signing_key() -> Ed25519PrivateKey:
    """Return the digest signing key: AUDIT_SIGNING_KEY (base64 of 32 raw bytes), or for the embedded
    set-up a key generated once into the data directory with mode 0600."""
    raw = settings.AUDIT_SIGNING_KEY
    if not raw:
        path = Path(settings.DATA_DIR) / "audit_signing_key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(base64.b64encode(os.urandom(32)).decode())
        raw = path.read_text().strip()
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(raw))


def public_key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def digest_message(chain: str, sequence: int, head_hash: str, signed_at: datetime) -> bytes:
    document = {"chain": chain, "head_hash": head_hash, "sequence": sequence, "signed_at": _timestamp(signed_at)}
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def digests_sign() -> list[AuditDigest]:
    """Sign the head of every chain that grew since its last digest; also append them to the export file."""
    key = _signing_key()
    key_id = public_key_id(key.public_key())
    signed = []
    for head in AuditChainHead.objects.order_by("chain"):
        last = AuditDigest.objects.filter(chain=head.chain).order_by("-sequence").first()
        if last is not None and last.sequence == head.sequence:
            continue
        signed_at = timezone.now()
        signature = key.sign(digest_message(head.chain, head.sequence, head.head_hash, signed_at))
        signed.append(
            AuditDigest.objects.create(
                chain=head.chain,
                sequence=head.sequence,
                head_hash=head.head_hash,
                signed_at=signed_at,
                key_id=key_id,
                signature=base64.b64encode(signature).decode(),
            )
        )
    _export(signed)
    return signed


def _export(digests: Iterable[AuditDigest]) -> None:
    """Append digests to a JSON-lines file outside the database (AUDIT_DIGEST_FILE), a second copy
    that a database rewrite cannot reach."""
    lines = [
        json.dumps(
            {
                "chain": digest.chain,
                "sequence": digest.sequence,
                "head_hash": digest.head_hash,
                "signed_at": _timestamp(digest.signed_at),
                "key_id": digest.key_id,
                "signature": digest.signature,
            },
            sort_keys=True,
        )
        for digest in digests
    ]
    if lines:
        path = Path(settings.AUDIT_DIGEST_FILE)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write("\n".join(lines) + "\n")


# --- Verification ---------------------------------------------------------------------------


@dataclass
class ChainReport:
    chain: str
    rows: int = 0
    digests_checked: int = 0
    # Version-1 rows whose personal fields were erased: verifiable by their links only.
    link_only_rows: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


def _events_in_order(chain: str) -> Iterator[AuditEvent]:
    return AuditEvent.objects.filter(chain=chain).order_by("sequence", "id").iterator(chunk_size=2000)


def chain_verify(chain: str, *, public_key: Ed25519PublicKey | None = None) -> ChainReport:
    """Recompute one chain and check it against its signed digests; report the first break."""
    report = ChainReport(chain=chain)
    public_key = public_key or _signing_key().public_key()
    digests = {digest.sequence: digest for digest in AuditDigest.objects.filter(chain=chain)}
    for signed in digests.values():
        message = digest_message(signed.chain, signed.sequence, signed.head_hash, signed.signed_at)
        try:
            public_key.verify(base64.b64decode(signed.signature), message)
        except (InvalidSignature, ValueError):
            report.problems.append(f"digest at sequence {signed.sequence} has a bad signature")
    expected_previous, expected_sequence = GENESIS, 1
    for event in _events_in_order(chain):
        report.rows += 1
        if event.sequence != expected_sequence:
            what = "deleted" if event.sequence > expected_sequence else "inserted"
            report.problems.append(
                f"row id {event.pk}: sequence {event.sequence} where {expected_sequence} was expected "
                f"(a row was {what} before it)"
            )
            return report
        if event.previous_hash != expected_previous:
            report.problems.append(f"row id {event.pk} (sequence {event.sequence}) does not link to the row before it")
            return report
        if event.hash_version == 1 and event.personal_erased_at is not None:
            # A version-1 row hashed its personal fields in plain; once they are erased only its links
            # (checked above, and by the next row) still vouch for it.
            report.link_only_rows += 1
        elif link_hash(event.previous_hash, event) != event.row_hash:
            report.problems.append(f"row id {event.pk} (sequence {event.sequence}) was modified")
            return report
        elif changed := personal_fields_check(event):
            report.problems.append(f"row id {event.pk} (sequence {event.sequence}) was modified ({', '.join(changed)})")
            return report
        digest = digests.get(event.sequence)
        if digest is not None:
            report.digests_checked += 1
            if digest.head_hash != event.row_hash:
                report.problems.append(
                    f"row id {event.pk} (sequence {event.sequence}) differs from the signed digest of "
                    f"{_timestamp(digest.signed_at)}: the chain was rewritten"
                )
                return report
        expected_previous, expected_sequence = event.row_hash, expected_sequence + 1
    last_signed = max(digests, default=0)
    if last_signed >= expected_sequence:
        report.problems.append(
            f"the chain ends at sequence {expected_sequence - 1}, but a digest signed sequence {last_signed}: "
            "rows were deleted from its end"
        )
    return report


def chains_verify(*, tenant_id: int | None = None) -> list[ChainReport]:
    """Verify one tenant's chain, or every chain (platform included) when no tenant is given."""
    if tenant_id is not None:
        return [chain_verify(chain_name(tenant_id))]
    chains = set(AuditChainHead.objects.values_list("chain", flat=True))
    chains |= set(AuditEvent.objects.values_list("chain", flat=True).distinct())
    return [chain_verify(chain) for chain in sorted(chains)]
