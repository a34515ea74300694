"""What the devices app holds about a backup account, and how to export and erase it.

Registered with the personal-data registry (tenants.personal_data) from DevicesConfig.ready(). The
erasure steps run in order, each idempotent and batched where a table can be large (an account may
have a million job rows): tell live devices to uninstall, wait for them a while, revoke every token,
delete log lines, jobs, commands, inventory and devices, crypto-shred the profile secrets, and
delete the account.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import CharField, Value
from django.db.models.functions import Cast, Concat
from django.utils import timezone

from devices import live, services
from devices.models import BackupAccount, Command, Device, Job, JobLogLine, ProtectedItem, StorageVault
from tenants import personal_data as registry
from tenants.audit import SYSTEM, Actor
from tenants.personal_data import BACKUP_ACCOUNT, ErasureStep, ExportSection, Handler, StepOutcome, Subject

BATCH = 5000
# How long the erasure waits for live devices to confirm the uninstall before it goes on without them.
UNINSTALL_WAIT = timedelta(minutes=10)
UNINSTALL_POLL_SECONDS = 15
ERASURE_ACTOR = Actor(label="privacy-erasure", role="system")


def _account(subject: Subject) -> BackupAccount | None:
    return (
        BackupAccount.objects.filter(tenant_id=subject.tenant_id, pk=subject.subject_id)
        .defer("profile_secrets")
        .first()
    )


def _describe(subject: Subject) -> str | None:
    account = _account(subject)
    return account.username if account is not None else None


def _identifiers(subject: Subject) -> list[str]:
    account = _account(subject)
    if account is None:
        return []
    values = [account.username, account.email, account.display_name]
    for device_id, name, public_ip in Device.objects.filter(account=account).values_list(
        "device_id", "name", "public_ip"
    ):
        values.extend([device_id, name, public_ip or ""])
    return [value for value in dict.fromkeys(values) if value]


def _hold(subject: Subject) -> dict[str, Any]:
    """Hide the account and refuse new devices and commands; its live devices stay connected so
    that the uninstall command can still reach them when execution starts."""
    BackupAccount.objects.filter(tenant_id=subject.tenant_id, pk=subject.subject_id).update(erasure_pending=True)
    return {}


def _release(subject: Subject, saved: dict[str, Any]) -> None:
    BackupAccount.objects.filter(tenant_id=subject.tenant_id, pk=subject.subject_id).update(erasure_pending=False)


# --- Export ------------------------------------------------------------------------------------


def _account_rows(subject: Subject) -> Iterator[dict[str, Any]]:
    account = BackupAccount.objects.filter(tenant_id=subject.tenant_id, pk=subject.subject_id).first()
    if account is None:
        return
    yield {
        "username": account.username,
        "display_name": account.display_name,
        "email": account.email,
        "max_devices": account.max_devices,
        "max_protected_bytes": account.max_protected_bytes,
        "is_suspended": account.is_suspended,
        "allow_admin_password_reset": account.allow_admin_password_reset,
        "created_at": account.created_at,
        # Opaque to the portal (wrapped by the account's R key), but the account's own data.
        "profile_secrets_base64": base64.b64encode(bytes(account.profile_secrets)).decode(),
        "profile_secrets_version": account.profile_secrets_version,
    }


def _values(queryset: Any, *fields: str) -> Iterator[dict[str, Any]]:
    return queryset.order_by("pk").values(*fields).iterator(chunk_size=2000)


def _export_sections(subject: Subject) -> list[ExportSection]:
    account_id = subject.subject_id
    return [
        ExportSection("account", _account_rows, tabular=False),
        ExportSection(
            "devices",
            lambda s: _values(
                Device.objects.filter(account_id=account_id),
                "device_id",
                "name",
                "os",
                "arch",
                "client_version",
                "timezone",
                "public_ip",
                "registered_at",
                "last_seen_at",
                "revoked_at",
                "consents",
            ),  # fmt: skip
        ),
        ExportSection(
            "protected_items",
            lambda s: _values(
                ProtectedItem.objects.filter(device__account_id=account_id),
                "device__device_id",
                "item_id",
                "name",
                "engine",
                "size_bytes",
            ),  # fmt: skip
        ),
        ExportSection(
            "vaults",
            lambda s: _values(
                StorageVault.objects.filter(account_id=account_id),
                "vault_id",
                "name",
                "kind",
                "bytes_used",
                "quota_bytes",
                "updated_at",
            ),  # fmt: skip
        ),
        ExportSection(
            "jobs",
            lambda s: _values(
                Job.objects.filter(device__account_id=account_id),
                "device__device_id",
                "job_id",
                "kind",
                "protected_item_id",
                "vault_id",
                "status",
                "files_done",
                "files_total",
                "bytes_read",
                "bytes_uploaded",
                "started_at",
                "finished_at",
            ),  # fmt: skip
        ),
        ExportSection(
            "job_log_lines",
            lambda s: _values(
                JobLogLine.objects.filter(job__device__account_id=account_id),
                "job__job_id",
                "logged_at",
                "level",
                "message",
            ),  # fmt: skip
        ),
        ExportSection(
            "commands",
            lambda s: _values(
                Command.objects.filter(device__account_id=account_id),
                "device__device_id",
                "command_id",
                "kind",
                "parameters",
                "status",
                "created_at",
                "finished_at",
                "result",
                "error",
            ),  # fmt: skip
        ),
    ]


# --- Erasure -----------------------------------------------------------------------------------


def shred_profile_secrets(account_id: int) -> int:
    """Crypto-shred the account's profile secrets (devices.services.account_secrets_shred): without
    the vault keys they wrap, its vault data cannot be read by anyone."""
    account = BackupAccount.objects.filter(pk=account_id).select_related("tenant").first()
    if account is None:
        return 0
    services.account_secrets_shred(account=account, actor=SYSTEM)
    return 1


def _uninstall_commands(subject: Subject) -> Any:
    return Command.objects.filter(
        device__account_id=subject.subject_id, kind=Command.Kind.UNINSTALL, parameters__erasure=subject.tombstone
    )


def _step_uninstall(subject: Subject) -> StepOutcome:
    """Tell every live device of the account to forget it (persisted, then pushed after commit)."""
    from devices.services import commands_issue_bulk

    already = set(_uninstall_commands(subject).values_list("device_id", flat=True))
    devices = [
        device
        for device in Device.objects.filter(account_id=subject.subject_id, revoked_at__isnull=True, is_live=True)
        .select_related("tenant")
        .order_by("pk")
        if device.pk not in already
    ]
    if devices:
        commands_issue_bulk(
            actor=ERASURE_ACTOR,
            tenant=devices[0].tenant,
            devices=devices,
            kind=Command.Kind.UNINSTALL,
            parameters={"remove_config": True, "erasure": subject.tombstone},
        )
    return StepOutcome(counts={"uninstall_commands": len(devices)})


def _step_await_uninstall(subject: Subject) -> StepOutcome:
    """Wait until the live devices confirmed the uninstall, or UNINSTALL_WAIT passed."""
    commands = _uninstall_commands(subject)
    unfinished = commands.exclude(status__in=Command.FINISHED)
    first = commands.order_by("created_at").values_list("created_at", flat=True).first()
    if first is None or not unfinished.exists():
        return StepOutcome(counts={"confirmed": commands.filter(status=Command.Status.SUCCEEDED).count()})
    if first + UNINSTALL_WAIT <= timezone.now():
        return StepOutcome(counts={"confirmed": 0, "unconfirmed": unfinished.count()})
    return StepOutcome(done=False, wait_seconds=UNINSTALL_POLL_SECONDS)


def _step_revoke_tokens(subject: Subject) -> StepOutcome:
    """Invalidate every device token of the account and close live connections."""
    devices = Device.objects.filter(account_id=subject.subject_id)
    channels = [channel for channel in devices.values_list("connection_channel", flat=True) if channel]
    changed = devices.exclude(token_hash__startswith="erased-").update(
        token_hash=Concat(Value("erased-"), Cast("pk", CharField())),
        revoked_at=timezone.now(),
        is_live=False,
        connection_channel="",
    )
    transaction.on_commit(lambda: live.send_to_device_channels(channels, {"type": "device.revoked"}))
    return StepOutcome(counts={"tokens_revoked": changed})


def _batched_delete(queryset: Any, name: str, *, nothing_refers: bool = False) -> StepOutcome:
    """Delete one batch of the rows; done when fewer than a batch were left.

    `nothing_refers`: the rows that pointed at these were deleted by an earlier step, so a plain
    DELETE is enough and Django's collector need not load each batch first (a million job rows
    took twice as long through it).
    """
    ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:BATCH])
    if ids:
        batch = queryset.model.objects.filter(pk__in=ids)
        if nothing_refers:
            batch._raw_delete(batch.db)
        else:
            batch.delete()
    return StepOutcome(done=len(ids) < BATCH, counts={name: len(ids)})


def _step_inventory(subject: Subject) -> StepOutcome:
    items, _ = ProtectedItem.objects.filter(device__account_id=subject.subject_id).delete()
    vaults, _ = StorageVault.objects.filter(account_id=subject.subject_id).delete()
    return StepOutcome(counts={"protected_items": items, "vaults": vaults})


def _step_account(subject: Subject) -> StepOutcome:
    deleted = BackupAccount.objects.filter(tenant_id=subject.tenant_id, pk=subject.subject_id).delete()[1]
    return StepOutcome(counts={"accounts": deleted.get("devices.BackupAccount", 0)})


def _erasure_steps(subject: Subject) -> list[ErasureStep]:
    account_id = subject.subject_id
    return [
        ErasureStep("uninstall", _step_uninstall),
        ErasureStep("await_uninstall", _step_await_uninstall),
        ErasureStep("revoke_tokens", _step_revoke_tokens),
        ErasureStep(
            "job_log_lines",
            lambda s: _batched_delete(JobLogLine.objects.filter(job__device__account_id=account_id), "job_log_lines"),
        ),
        ErasureStep(
            "jobs",
            lambda s: _batched_delete(Job.objects.filter(device__account_id=account_id), "jobs", nothing_refers=True),
        ),
        ErasureStep(
            "commands", lambda s: _batched_delete(Command.objects.filter(device__account_id=account_id), "commands")
        ),
        ErasureStep("inventory", _step_inventory),
        ErasureStep("devices", lambda s: _batched_delete(Device.objects.filter(account_id=account_id), "devices")),
        ErasureStep("shred_secrets", lambda s: StepOutcome(counts={"shredded": shred_profile_secrets(account_id)})),
        ErasureStep("account", _step_account),
    ]


HANDLER = Handler(
    name="devices",
    order=10,
    models=(
        "devices.BackupAccount",
        "devices.Device",
        "devices.ProtectedItem",
        "devices.StorageVault",
        "devices.Command",
        "devices.Job",
        "devices.JobLogLine",
    ),
    kinds=frozenset({BACKUP_ACCOUNT}),
    identifiers=_identifiers,
    hold=_hold,
    release=_release,
    export_sections=_export_sections,
    erasure_steps=_erasure_steps,
    describe=_describe,
    subjects_of_tenant=lambda tenant_id: list(
        BackupAccount.objects.filter(tenant_id=tenant_id).order_by("pk").values_list("pk", flat=True)
    ),
)


def register() -> None:
    registry.handler_register(HANDLER)
