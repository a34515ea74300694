"""Writes of the licensing service: registering portals, receiving reports, erasing usernames.

A report is stored only after its signature, timestamp and contents check out: the body must
parse as the allow-list's types (licensing.schema), so the service never stores a field the
allow-list does not name. The idempotency key makes a repeated delivery return the first receipt;
a second report for a period the portal has reported already is refused, so nothing is billed twice.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from licensing import conf
from licensing import payload as payload_format
from licensing.models_service import ErasureReceipt, ErasureSuppression, ReceivedReport, RegisteredPortal
from licensing.schema import SchemaError, UsageReportPayload
from licensing.signing import SERIAL_HEADER, SignatureError, header, verify
from tenants.audit import Actor, audit_record

SUBJECT_KINDS = ("backup_account", "admin")
# Checked when the serial is unknown, so an unknown portal takes as long to refuse as a bad signature.
_DUMMY_KEY = secrets.token_urlsafe(32)


class ReceiveError(Exception):
    """A request the service refuses: an HTTP status, a short code and a sentence."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


# --- Portals --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    portal: RegisteredPortal
    # Shown once to whoever registered the portal; the portal's operator enters it there.
    licence_key: str


@transaction.atomic
def portal_register(*, actor: Actor, name: str, serial: str = "", licence_key: str = "") -> Registration:
    """Register a portal for billing; a serial and key are made unless given."""
    serial = serial or "portal-" + uuid.uuid4().hex[:16]
    licence_key = licence_key or secrets.token_urlsafe(32)
    portal = RegisteredPortal.objects.create(serial=serial, licence_key=licence_key, name=name[:200])
    audit_record(
        actor=actor, tenant=None, action="licensing.portal_registered", target=portal, after={"serial": serial}
    )
    return Registration(portal=portal, licence_key=licence_key)


def portal_authenticate(
    *, headers: Any, method: str, path: str, body: bytes, now: datetime | None = None
) -> RegisteredPortal:
    """Return the portal that signed this request, or raise ReceiveError (401 or 403)."""
    now = now or timezone.now()
    serial = header(headers, SERIAL_HEADER)
    portal = RegisteredPortal.objects.filter(serial=serial).first() if serial else None
    try:
        verify(
            key=portal.licence_key if portal else _DUMMY_KEY,
            headers=headers,
            method=method,
            path=path,
            body=body,
            now=now.timestamp(),
        )
    except SignatureError as error:
        raise ReceiveError(401, error.code, error.message) from None
    if portal is None:  # pragma: no cover - the dummy key never verifies
        raise ReceiveError(401, "unknown_portal", "No portal is registered with this serial.")
    if not portal.is_active:
        raise ReceiveError(403, "portal_inactive", "This portal's licence is not active.")
    return portal


# --- Reports --------------------------------------------------------------------------------


def _summary(payload: UsageReportPayload) -> dict[str, Any]:
    boosters: Counter[str] = Counter()
    devices = with_items = accounts = 0
    admins: set[str] = set()
    for tenant in payload["tenants"]:
        admins.update(tenant["admins"])
        accounts += len(tenant["backup_accounts"])
        for device in tenant["devices"]:
            devices += 1
            if device["boosters"]:
                with_items += 1
            boosters.update(device["boosters"])
    return {
        "devices": devices,
        "devices_with_protected_items": with_items,
        "boosters": dict(sorted(boosters.items())),
        "admins": len(admins),
        "backup_accounts": accounts,
    }


def receipt_of(report: ReceivedReport, *, duplicate: bool) -> dict[str, Any]:
    return {
        "receipt_id": str(report.receipt_id),
        "idempotency_key": str(report.idempotency_key),
        "period": report.period.isoformat(),
        "received_at": report.received_at.isoformat(),
        "portal_ip": report.source_ip,
        "sha256": report.sha256,
        "duplicate": duplicate,
    }


def _username_digest(portal: RegisteredPortal, subject_kind: str, username: str) -> str:
    message = f"{portal.serial}\n{subject_kind}\n{username}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()


def _apply_suppressions(portal: RegisteredPortal, payload: UsageReportPayload) -> bool:
    """Pseudonymise, in a report just received, usernames erased earlier; return whether any were."""
    suppressions = {(row.subject_kind, row.username_digest): row.pseudonym for row in portal.suppressions.all()}
    if not suppressions:
        return False
    names = {
        "admin": {name for tenant in payload["tenants"] for name in tenant["admins"]},
        "backup_account": {name for tenant in payload["tenants"] for name in tenant["backup_accounts"]}
        | {device["account"] for tenant in payload["tenants"] for device in tenant["devices"]},
    }
    changed = False
    for subject_kind, usernames in names.items():
        for username in usernames:
            pseudonym = suppressions.get((subject_kind, _username_digest(portal, subject_kind, username)))
            if pseudonym is not None:
                payload_format.pseudonymise(
                    payload, usernames=[username], pseudonym=pseudonym, subject_kind=subject_kind
                )
                changed = True
    return changed


def _parse_report(body: bytes, content_encoding: str) -> tuple[bytes, UsageReportPayload]:
    if content_encoding == "gzip":
        try:
            data = payload_format.decompress(body, limit=conf.MAX_PAYLOAD_BYTES)
        except payload_format.PayloadTooLarge as error:
            raise ReceiveError(413, "too_large", str(error)) from None
        except ValueError as error:
            raise ReceiveError(400, "invalid_report", str(error)) from None
    elif content_encoding in ("", "identity"):
        data = body
    else:
        raise ReceiveError(415, "invalid_report", f"Unsupported Content-Encoding {content_encoding!r}.")
    try:
        return data, payload_format.parse(data)
    except SchemaError as error:
        raise ReceiveError(422, "invalid_report", str(error)) from None


def report_receive(
    *,
    portal: RegisteredPortal,
    idempotency_key: str,
    body: bytes,
    content_encoding: str = "",
    source_ip: str | None,
    now: datetime | None = None,
) -> tuple[dict[str, Any], bool]:
    """Store a report unless this key was stored already; return (receipt, stored now)."""
    now = now or timezone.now()
    try:
        key = uuid.UUID(idempotency_key)
    except ValueError:
        raise ReceiveError(400, "bad_idempotency_key", "Idempotency-Key must be a UUID.") from None
    existing = ReceivedReport.objects.filter(portal=portal, idempotency_key=key).first()
    if existing is not None:
        return receipt_of(existing, duplicate=True), False
    data, payload = _parse_report(body, content_encoding)
    part = payload["portal"]
    if part["serial"] != portal.serial:
        raise ReceiveError(422, "invalid_report", "The report names another portal's serial.")
    try:
        period = date.fromisoformat(part["period"])
        generated_at = parse_datetime(part["generated_at"])
    except ValueError:
        generated_at = None
    if generated_at is None:
        raise ReceiveError(422, "invalid_report", "The report's period or generated_at is not a date.")
    erased = _apply_suppressions(portal, payload)
    stored_body = payload_format.serialise(payload).body if erased or content_encoding != "gzip" else body
    try:
        with transaction.atomic():
            if ReceivedReport.objects.filter(portal=portal, period=period).exists():
                raise ReceiveError(409, "period_taken", f"A report for {period} was received already.")
            report = ReceivedReport.objects.create(
                portal=portal,
                idempotency_key=key,
                period=period,
                generated_at=generated_at,
                received_at=now,
                source_ip=source_ip,
                body=stored_body,
                sha256=hashlib.sha256(data).hexdigest(),
                erased_at=now if erased else None,
                **_summary(payload),
            )
            RegisteredPortal.objects.filter(pk=portal.pk).update(last_seen_ip=source_ip, last_report_at=now)
    except IntegrityError:
        # Another request with the same key (or period) won the race.
        existing = ReceivedReport.objects.filter(portal=portal, idempotency_key=key).first()
        if existing is None:
            raise ReceiveError(409, "period_taken", f"A report for {period} was received already.") from None
        return receipt_of(existing, duplicate=True), False
    return receipt_of(report, duplicate=False), True


# --- Erasure --------------------------------------------------------------------------------


def erasure_receipt_of(receipt: ErasureReceipt) -> dict[str, Any]:
    return {
        "receipt_id": str(receipt.receipt_id),
        "reference": receipt.reference,
        "subject_kind": receipt.subject_kind,
        "pseudonym": receipt.pseudonym,
        "erased_at": receipt.erased_at.isoformat(),
        "counts": receipt.counts,
    }


def erasure_apply(
    *, portal: RegisteredPortal, username: str, subject_kind: str, reference: str, now: datetime | None = None
) -> dict[str, Any]:
    """Pseudonymise `username` in every report the portal sent, keep a keyed hash of it so that a
    report still in flight is pseudonymised when it arrives, and return a receipt.

    The same reference returns the same receipt again. The receipt and the audit event hold the
    pseudonym and the counts, never the username.
    """
    if subject_kind not in SUBJECT_KINDS:
        raise ReceiveError(422, "invalid_erasure", f"subject_kind must be one of {', '.join(SUBJECT_KINDS)}.")
    if not username or len(username) > 150 or not reference or len(reference) > 100:
        raise ReceiveError(422, "invalid_erasure", "A username (150 characters at most) and a reference are needed.")
    existing = ErasureReceipt.objects.filter(portal=portal, reference=reference).first()
    if existing is not None:
        return erasure_receipt_of(existing)
    now = now or timezone.now()
    pseudonym = payload_format.pseudonym_for(serial=portal.serial, reference=reference)
    counts = {"reports": 0, "usernames": 0, "device_names": 0}
    with transaction.atomic():
        ErasureSuppression.objects.get_or_create(
            portal=portal,
            subject_kind=subject_kind,
            username_digest=_username_digest(portal, subject_kind, username),
            defaults={"pseudonym": pseudonym},
        )
        reports = ReceivedReport.objects.select_for_update().filter(portal=portal).order_by("period")
        for report in reports.iterator(chunk_size=20):
            data = payload_format.decompress(bytes(report.body), limit=conf.MAX_PAYLOAD_BYTES)
            if not payload_format.mentions(data, username):
                continue
            payload = payload_format.parse(data)
            changed = payload_format.pseudonymise(
                payload, usernames=[username], pseudonym=pseudonym, subject_kind=subject_kind
            )
            if not changed["usernames"]:
                continue
            for field, summary_value in _summary(payload).items():
                setattr(report, field, summary_value)
            report.body = payload_format.serialise(payload).body
            report.erased_at = now
            report.save()
            counts["reports"] += 1
            counts["usernames"] += changed["usernames"]
            counts["device_names"] += changed["device_names"]
        receipt = ErasureReceipt.objects.create(
            portal=portal,
            reference=reference,
            subject_kind=subject_kind,
            pseudonym=pseudonym,
            erased_at=now,
            counts=counts,
        )
        audit_record(
            actor=Actor(label=f"portal:{portal.serial}", role="licensing_portal"),
            tenant=None,
            action="licensing.erasure_applied",
            target=receipt,
            after={"reference": reference, "subject_kind": subject_kind, "counts": counts},
        )
    return erasure_receipt_of(receipt)
