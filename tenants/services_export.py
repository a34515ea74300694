"""GDPR export (Art. 20): a machine-readable archive of what the portal holds about a subject.

The archive is a zip with one JSON file per section, plus a CSV file for each tabular section,
built in the background from the registry's export sections (tenants.personal_data), so the export
knows no app's tables. It is downloadable once, by the admin who asked, until it expires; then its
bytes are deleted and only the row saying that it existed remains.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import zipfile
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from tenants import personal_data
from tenants.audit import SYSTEM, Actor, audit_record
from tenants.models import Tenant
from tenants.models_erasure import DataExport, ErasureRequest
from tenants.personal_data import Subject

EXPORT_TTL = timedelta(hours=24)


def _csv_safe(value: Any) -> str:
    """Return a cell that a spreadsheet will not run as a formula (CSV injection)."""
    text = (
        ""
        if value is None
        else (json.dumps(value, cls=DjangoJSONEncoder) if isinstance(value, dict | list) else str(value))
    )
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@transaction.atomic
def export_request(*, actor: Actor, tenant: Tenant, subject_kind: str, subject_id: int) -> DataExport:
    """Queue an export of one subject's data; a subject under an erasure hold is not exported."""
    from tenants.services_erasure import subject_describe

    if subject_describe(tenant=tenant, kind=subject_kind, subject_id=subject_id) is None:
        raise ValidationError("There is no such subject in this tenant.")
    if ErasureRequest.objects.filter(
        tenant=tenant,
        subject_kind=subject_kind,
        subject_id=subject_id,
        state__in=ErasureRequest.HOLDING_STATES,
    ).exists():
        raise ValidationError("This subject's data is being erased and is no longer exported.")
    now = timezone.now()
    export = DataExport.objects.create(
        tenant=tenant,
        subject_kind=subject_kind,
        subject_id=subject_id,
        requested_by=actor.user,
        created_at=now,
        expires_at=now + EXPORT_TTL,
    )
    audit_record(
        actor=actor,
        tenant=tenant,
        action="export.requested",
        target=export,
        after={"subject_kind": subject_kind, "subject_id": subject_id},
    )
    transaction.on_commit(lambda: _enqueue_build(export.pk))
    return export


def _enqueue_build(export_id: int) -> None:
    from tenants.tasks_erasure import export_build_task

    export_build_task.delay(export_id)


def _write_json(archive: zipfile.ZipFile, name: str, rows: Iterable[dict[str, Any]]) -> int:
    """Stream rows into a JSON array entry, one row at a time (bounded memory for large accounts)."""
    count = 0
    with archive.open(f"{name}.json", "w") as entry:
        entry.write(b"[")
        for row in rows:
            entry.write((b",\n" if count else b"\n") + json.dumps(row, cls=DjangoJSONEncoder).encode())
            count += 1
        entry.write(b"\n]\n")
    return count


def _write_csv(archive: zipfile.ZipFile, name: str, rows: Iterable[dict[str, Any]]) -> None:
    with archive.open(f"{name}.csv", "w") as entry:
        text = io.TextIOWrapper(entry, encoding="utf-8", newline="")
        writer: Any = None
        for row in rows:
            if writer is None:
                writer = csv.DictWriter(text, fieldnames=list(row))
                writer.writeheader()
            writer.writerow({key: _csv_safe(value) for key, value in row.items()})
        text.flush()
        text.detach()


def export_archive_build(*, subject: Subject) -> tuple[bytes, dict[str, int]]:
    """Return the zip of every handler's sections for the subject, and the row count per section."""
    counts: dict[str, int] = {}
    with tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024) as spool:
        with zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for handler in personal_data.handlers(subject.kind):
                for section in handler.export_sections(subject):
                    name = f"{handler.name}-{section.name}"
                    counts[name] = _write_json(archive, name, section.rows(subject))
                    if section.tabular:
                        _write_csv(archive, name, section.rows(subject))
            manifest = {
                "format": "backup-portal-export/1",
                "subject_kind": subject.kind,
                "generated_at": timezone.now().isoformat(),
                "sections": counts,
            }
            archive.writestr("manifest.json", json.dumps(manifest, indent=2))
        spool.seek(0)
        return spool.read(), counts


def export_build(*, export_id: int) -> DataExport | None:
    """Build a pending export's archive (the background part); idempotent."""
    export = DataExport.objects.select_related("tenant").filter(pk=export_id).first()
    if export is None or export.state != DataExport.State.PENDING:
        return export
    subject = Subject(kind=export.subject_kind, tenant_id=export.tenant_id, subject_id=export.subject_id, tombstone="")
    try:
        data, counts = export_archive_build(subject=subject)
    except Exception as error:
        DataExport.objects.filter(pk=export.pk, state=DataExport.State.PENDING).update(
            state=DataExport.State.FAILED, error=f"{type(error).__name__}"[:500]
        )
        raise
    with transaction.atomic():
        updated = DataExport.objects.filter(pk=export.pk, state=DataExport.State.PENDING).update(
            state=DataExport.State.READY, archive=data, size_bytes=len(data), ready_at=timezone.now()
        )
        if updated:
            audit_record(
                actor=SYSTEM,
                tenant=export.tenant,
                action="export.ready",
                target=export,
                after={"size_bytes": len(data), "sections": counts},
            )
    export.refresh_from_db()
    return export


@transaction.atomic
def export_download(*, actor: Actor, export: DataExport) -> bytes:
    """Hand the archive over once, to the admin who asked for it, and delete it."""
    export = DataExport.objects.select_for_update().select_related("tenant").get(pk=export.pk)
    if export.requested_by_id is None or actor.user is None or export.requested_by_id != actor.user.pk:
        raise ValidationError("Only the admin who asked for this export can download it.")
    if export.state != DataExport.State.READY or export.expires_at <= timezone.now():
        raise ValidationError("This export is no longer available.")
    data = bytes(export.archive)
    export.archive, export.state, export.downloaded_at = b"", DataExport.State.DOWNLOADED, timezone.now()
    export.save(update_fields=["archive", "state", "downloaded_at"])
    audit_record(
        actor=actor, tenant=export.tenant, action="export.downloaded", target=export, after={"size_bytes": len(data)}
    )
    return data


def exports_expire(*, now: datetime | None = None) -> int:
    """Delete the archives of exports past their expiry; return how many."""
    now = now or timezone.now()
    return DataExport.objects.filter(
        state__in=[DataExport.State.READY, DataExport.State.PENDING], expires_at__lte=now
    ).update(state=DataExport.State.EXPIRED, archive=b"")


def exports_erase(*, subject: Subject) -> int:
    """Delete the archives of every export of the subject (part of its erasure)."""
    return (
        DataExport.objects.filter(tenant_id=subject.tenant_id, subject_kind=subject.kind, subject_id=subject.subject_id)
        .exclude(state=DataExport.State.ERASED)
        .update(state=DataExport.State.ERASED, archive=b"", size_bytes=0)
    )
