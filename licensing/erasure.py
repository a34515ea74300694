"""Erasure propagation, the portal's side: make the licensing service forget a username.

    receipt = erasure_propagate(username="alice", subject_kind="backup_account", reference="42")

The GDPR workflow calls this for a backup account or an admin being erased; `reference` is its
erasure request's id. In order:

1. Every report this portal stored is rewritten with the username replaced by a pseudonym:
   unsent reports first of all, so that nothing carrying the name is sent after this point, and
   sent ones too (the transparency pages then say the stored copy was rewritten, and when). The
   pseudonym (`erased-` and 12 hex digits) is derived from the serial and the reference, never from
   the name, and the service derives the same one, so both sides' copies agree.
2. The service is asked, in a request signed like reports, to do the same to everything it holds.
   It also keeps a keyed hash of the name, so a report that was already in flight when step 1 ran
   is pseudonymised when it arrives.
3. The service's receipt is returned: receipt_id, reference, subject_kind, pseudonym, erased_at
   (ISO 8601) and counts (reports, usernames, device_names), plus portal_counts for step 1.

When the service cannot be reached the function raises ServiceUnreachable after step 1 (which is
idempotent): the caller keeps its request open and calls again later with the same reference; the
service answers a repeated reference with the first receipt. ServiceRefused means the service
understood and refused (for instance an unknown serial); LicensingNotConfigured that this portal
has no licence. Every occurrence of the username in the given role is replaced, in every tenant:
reports name no tenant, so a namesake in another tenant is pseudonymised as well.

`recipient_propagate` is the same call as the GDPR workflow's recipient "licensing" (registered in
licensing/apps.py): it maps the workflow's Subject onto erasure_propagate and its failures onto
the workflow's "retry later" (any exception) and "refused" (RecipientRefused).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.db import transaction
from django.utils import timezone

from licensing import client
from licensing import payload as payload_format
from licensing.client import LicensingNotConfigured, ServiceRefused, ServiceUnreachable
from licensing.models import UsageReport
from licensing.services import licence_current
from licensing.services_receiver import SUBJECT_KINDS
from tenants import personal_data
from tenants.audit import SYSTEM, audit_record

__all__ = [
    "LicensingNotConfigured",
    "ServiceRefused",
    "ServiceUnreachable",
    "erasure_propagate",
    "recipient_propagate",
]

# The name of the workflow's recipient status row, shown on the request and its receipt.
RECIPIENT_NAME = "licensing"
_KEY_NAMESPACE = uuid.UUID("0b0b9c57-6c41-4c1e-9d7e-0c8f3e0d6a10")


def reports_pseudonymise(*, serial: str, username: str, subject_kind: str, reference: str) -> dict[str, int]:
    """Rewrite this portal's stored reports without `username`; return how many, unsent and sent."""
    pseudonym = payload_format.pseudonym_for(serial=serial, reference=reference)
    counts = {"unsent_reports": 0, "sent_reports": 0, "usernames": 0}
    now = timezone.now()
    with transaction.atomic():
        reports = UsageReport.objects.select_for_update().filter(serial=serial).order_by("period")
        for report in reports.iterator(chunk_size=20):
            data = payload_format.decompress(bytes(report.body), limit=max(report.size_bytes, 1))
            if not payload_format.mentions(data, username):
                continue
            payload = payload_format.parse(data)
            changed = payload_format.pseudonymise(
                payload, usernames=[username], pseudonym=pseudonym, subject_kind=subject_kind
            )
            if not changed["usernames"]:
                continue
            rewritten = payload_format.serialise(payload)
            sent = report.status != UsageReport.Status.PENDING
            report.body = rewritten.body
            report.sha256 = rewritten.sha256
            report.size_bytes = rewritten.size
            report.tenant_spans = [list(span) for span in rewritten.spans]
            report.rewritten_at = now
            report.rewritten_note = (
                f"A username was pseudonymised {'after' if sent else 'before'} sending, for erasure request "
                f"{reference}."
            )[:200]
            report.save(
                update_fields=["body", "sha256", "size_bytes", "tenant_spans", "rewritten_at", "rewritten_note"]
            )
            counts["sent_reports" if sent else "unsent_reports"] += 1
            counts["usernames"] += changed["usernames"]
    return counts


def erasure_propagate(*, username: str, subject_kind: str, reference: str) -> dict[str, Any]:
    """Pseudonymise `username` in this portal's reports and at the licensing service; return the receipt."""
    if subject_kind not in SUBJECT_KINDS:
        raise ValueError(f"subject_kind must be one of {', '.join(SUBJECT_KINDS)}")
    if not username or not reference:
        raise ValueError("a username and a reference are needed")
    licence = licence_current()
    if licence is None:
        raise LicensingNotConfigured("No licence: run manage.py licensing_configure.")
    portal_counts = reports_pseudonymise(
        serial=licence.serial, username=username, subject_kind=subject_kind, reference=reference
    )
    body = json.dumps({"username": username, "subject_kind": subject_kind, "reference": reference}).encode()
    answer = client.post_signed(
        endpoint="v1/erasures/",
        body=body,
        serial=licence.serial,
        licence_key=licence.licence_key,
        idempotency_key=str(uuid.uuid5(_KEY_NAMESPACE, f"{licence.serial}:{reference}")),
    )
    receipt = {**answer.data, "portal_counts": portal_counts}
    audit_record(
        actor=SYSTEM,
        tenant=None,
        action="licensing.erasure_propagated",
        target_type="erasure_request",
        target_id=reference[:64],
        after={
            "subject_kind": subject_kind,
            "receipt_id": receipt.get("receipt_id", ""),
            "counts": receipt.get("counts", {}),
            "portal_counts": portal_counts,
        },
    )
    return receipt


def recipient_propagate(subject: personal_data.Subject, reference: str) -> dict[str, Any]:
    """Erase a backup account or an admin at the licensing service, for the GDPR workflow.

    Both kinds appear in usage reports (an admin is any member of a tenant, by login username), so
    both are sent. ServiceUnreachable is left to the workflow, which retries with backoff; a refusal
    cannot be cured by asking again and becomes RecipientRefused.
    """
    try:
        return erasure_propagate(username=subject.username, subject_kind=subject.kind, reference=reference)
    except LicensingNotConfigured:
        # Reports are built only under a licence: with none and no stored report, nothing about
        # anyone was ever sent. Stored reports without a licence (it was removed) may have been sent,
        # so the erasure waits, retrying, until the licence is configured again.
        if UsageReport.objects.exists():
            raise
        return _nothing_sent_receipt(subject_kind=subject.kind, reference=reference)
    except ServiceRefused as error:
        raise personal_data.RecipientRefused(str(error)) from error


def _nothing_sent_receipt(*, subject_kind: str, reference: str) -> dict[str, Any]:
    receipt: dict[str, Any] = {
        "receipt_id": f"no-licence-{reference}",
        "reference": reference,
        "subject_kind": subject_kind,
        "erased_at": timezone.now().isoformat(),
        "counts": {"reports": 0, "usernames": 0, "device_names": 0},
        "portal_counts": {"unsent_reports": 0, "sent_reports": 0, "usernames": 0},
        "note": "This portal has no licence and never built a usage report: the licensing service holds nothing.",
    }
    audit_record(
        actor=SYSTEM,
        tenant=None,
        action="licensing.erasure_nothing_sent",
        target_type="erasure_request",
        target_id=reference[:64],
        after={"subject_kind": subject_kind, "receipt_id": receipt["receipt_id"]},
    )
    return receipt
