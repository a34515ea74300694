"""Reads of the portal side: building a usage report, and what the transparency pages show.

The report is built from a handful of ordered aggregate queries read with iterator(chunk_size),
merged tenant by tenant and written straight into the compressed payload (licensing.payload), so
neither the rows nor the JSON are ever held whole in memory. Every value that enters it passes
through the allow-list's types (licensing.schema).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db.models import Aggregate, CharField, Count, Max, Min, Q, QuerySet
from django.http import Http404
from django.utils import timezone

from devices.models import BackupAccount, Command, Device, Job, StorageVault
from licensing import payload as payload_format
from licensing.conf import grace_period
from licensing.models import DeliveryAttempt, PortalLicence, UsageReport
from licensing.schema import (
    Booster,
    CommandUsage,
    FeatureUsage,
    JobUsage,
    PortalPart,
    allowed_values,
    device_part,
    fields_of,
)
from tenants.models import ApiKey, Membership, Tenant
from tenants.models_access import AccessRequest

CHUNK_SIZE = 5000
BOOSTERS: frozenset[str] = frozenset(allowed_values(Booster))


class EngineList(Aggregate):
    """The distinct engines of a device's protected items, comma-separated (SQLite and PostgreSQL)."""

    function = "GROUP_CONCAT"
    template = "%(function)s(%(distinct)s%(expressions)s)"
    allow_distinct = True
    output_field = CharField()

    def as_postgresql(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        return self.as_sql(
            compiler,
            connection,
            function="STRING_AGG",
            template="%(function)s(%(distinct)s%(expressions)s, ',')",
            **extra_context,
        )


# --- Periods --------------------------------------------------------------------------------


def period_last_closed(*, now: datetime | None = None) -> date:
    """Return the UTC day that ended most recently: the period the next report is for."""
    now = now or timezone.now()
    return now.astimezone(UTC).date() - timedelta(days=1)


def period_window(period: date) -> tuple[datetime, datetime]:
    start = datetime.combine(period, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


# --- Building -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltReport:
    serialised: payload_format.Serialised
    tenant_ids: list[int]
    device_count: int
    generated_at: datetime
    portal: PortalPart


class _Rows:
    """An ordered stream of (tenant_id, ...) rows, read one tenant at a time."""

    def __init__(self, rows: Iterator[tuple[Any, ...]]) -> None:
        self._rows = rows
        self._next: tuple[Any, ...] | None = next(rows, None)

    def of_tenant(self, tenant_id: int) -> Iterator[tuple[Any, ...]]:
        # Rows of a tenant that appeared after the tenant list was read are skipped.
        while self._next is not None and self._next[0] < tenant_id:
            self._next = next(self._rows, None)
        while self._next is not None and self._next[0] == tenant_id:
            yield self._next
            self._next = next(self._rows, None)


def _admin_rows() -> Iterator[tuple[Any, ...]]:
    return (
        Membership.objects.order_by("tenant_id", "user__username")
        .values_list("tenant_id", "user__username")
        .iterator(chunk_size=CHUNK_SIZE)
    )


def _account_rows() -> Iterator[tuple[Any, ...]]:
    return (
        BackupAccount.objects.order_by("tenant_id", "username")
        .values_list("tenant_id", "username")
        .iterator(chunk_size=CHUNK_SIZE)
    )


def _device_rows() -> Iterator[tuple[Any, ...]]:
    """(tenant_id, name, account username, engines, protected items) per device in use."""
    return (
        Device.objects.filter(revoked_at__isnull=True)
        .values("tenant_id", "id", "name", "account__username")
        .annotate(engines=EngineList("protected_items__engine", distinct=True), items=Count("protected_items"))
        .order_by("tenant_id", "name", "id")
        .values_list("tenant_id", "name", "account__username", "engines", "items")
        .iterator(chunk_size=CHUNK_SIZE)
    )


def _boosters(engines: str | None) -> list[Booster]:
    if not engines:
        return []
    return sorted(engine for engine in set(engines.split(",")) if engine in BOOSTERS)  # type: ignore[misc]


def _counts_by(queryset: QuerySet[Any], field: str, keys: tuple[str, ...]) -> dict[str, int]:
    counts = dict.fromkeys(keys, 0)
    for key, count in queryset.order_by().values(field).annotate(count=Count("id")).values_list(field, "count"):
        if key in counts:
            counts[key] = count
    return counts


def usage_report_build(*, serial: str, period: date, now: datetime | None = None) -> BuiltReport:
    """Build the report for `period`: the inventory as it is now, the activity within the period."""
    generated_at = now or timezone.now()
    window_from, window_to = period_window(period)
    tenant_ids = list(Tenant.objects.order_by("pk").values_list("pk", flat=True))
    admins, accounts, devices = _Rows(_admin_rows()), _Rows(_account_rows()), _Rows(_device_rows())
    totals = {"backup_accounts": 0, "devices": 0, "devices_with_protected_items": 0, "protected_items": 0}
    writer = payload_format.PayloadWriter()
    writer.begin()
    for tenant_id in tenant_ids:
        writer.tenant_begin()
        for _, username in admins.of_tenant(tenant_id):
            writer.admin(username)
        for _, username in accounts.of_tenant(tenant_id):
            writer.account(username)
            totals["backup_accounts"] += 1
        for _, name, account, engines, items in devices.of_tenant(tenant_id):
            boosters = _boosters(engines)
            writer.device(device_part(name=name, account=account, boosters=boosters))
            totals["devices"] += 1
            totals["devices_with_protected_items"] += 1 if items else 0
            totals["protected_items"] += items
        writer.tenant_end()

    tenants = Tenant.objects.aggregate(
        total=Count("id"),
        suspended=Count("id", filter=Q(status=Tenant.Status.SUSPENDED)),
        two_factor=Count("id", filter=Q(require_two_factor=True)),
    )
    in_window = {"created_at__gte": window_from, "created_at__lt": window_to}
    features = FeatureUsage(
        tenants=len(tenant_ids),
        tenants_suspended=tenants["suspended"],
        tenants_requiring_two_factor=tenants["two_factor"],
        admins=Membership.objects.aggregate(count=Count("user_id", distinct=True))["count"],
        backup_accounts=totals["backup_accounts"],
        devices=totals["devices"],
        devices_with_protected_items=totals["devices_with_protected_items"],
        protected_items=totals["protected_items"],
        storage_vaults=StorageVault.objects.count(),
        api_keys_active=ApiKey.objects.filter(revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=generated_at))
        .count(),
        staff_access_requests=AccessRequest.objects.filter(**in_window).count(),
        commands=_counts_by(  # type: ignore[typeddict-item]
            Command.objects.filter(**in_window), "kind", fields_of(CommandUsage)
        ),
        jobs=_counts_by(  # type: ignore[typeddict-item]
            Job.objects.filter(started_at__gte=window_from, started_at__lt=window_to), "kind", fields_of(JobUsage)
        ),
    )
    portal = PortalPart(
        serial=serial,
        period=period.isoformat(),
        generated_at=generated_at.astimezone(UTC).isoformat(),
        activity_from=window_from.isoformat(),
        activity_to=window_to.isoformat(),
        features=features,
    )
    return BuiltReport(
        serialised=writer.finish(portal),
        tenant_ids=tenant_ids,
        device_count=totals["devices"],
        generated_at=generated_at,
        portal=portal,
    )


# --- Reading the outbox ---------------------------------------------------------------------


def licence_get() -> PortalLicence | None:
    return PortalLicence.objects.first()


def usage_reports() -> QuerySet[UsageReport]:
    """Every report, newest first, without their bodies."""
    return UsageReport.objects.defer("body").annotate(attempt_count=Count("attempts")).order_by("-period")


def usage_report_get(*, report_id: Any) -> UsageReport:
    try:
        return UsageReport.objects.get(pk=int(report_id))
    except (UsageReport.DoesNotExist, ValueError, TypeError):
        raise Http404 from None


def attempts_of(*, report: UsageReport) -> QuerySet[DeliveryAttempt]:
    return DeliveryAttempt.objects.filter(report=report).order_by("attempted_at", "id")


def usage_report_json(*, report: UsageReport) -> bytes:
    """Return the report's JSON exactly as sent (the body decompressed)."""
    return payload_format.decompress(bytes(report.body), limit=max(report.size_bytes, 1))


def usage_report_tenant_part(*, report: UsageReport, tenant: Tenant) -> bytes | None:
    """Return the bytes of the report that describe `tenant`, or None if the report predates it."""
    try:
        index = report.tenant_ids.index(tenant.pk)
    except ValueError:
        return None
    start, end = report.tenant_spans[index]
    return payload_format.json_prefix(bytes(report.body), end)[start:end]


@dataclass(frozen=True)
class ReportingStatus:
    last_delivered_at: datetime | None
    oldest_unsent_at: datetime | None
    pending: int
    # True when nothing was delivered for longer than the grace period although reports exist.
    overdue: bool
    since: datetime | None


def reporting_status(*, now: datetime | None = None) -> ReportingStatus:
    """Return whether the portal has gone unreported for longer than the grace period (one query)."""
    now = now or timezone.now()
    figures = UsageReport.objects.aggregate(
        last_delivered=Max("delivered_at"),
        oldest_unsent=Min("generated_at", filter=Q(status=UsageReport.Status.PENDING)),
        first_built=Min("generated_at"),
        pending=Count("id", filter=Q(status=UsageReport.Status.PENDING)),
    )
    # Since the last delivery, or since the first report was built if none was ever delivered. With
    # nothing waiting to be sent this still turns overdue: then beat or the worker has stopped.
    since = figures["last_delivered"] or figures["first_built"]
    overdue = since is not None and now - since > grace_period()
    return ReportingStatus(
        last_delivered_at=figures["last_delivered"],
        oldest_unsent_at=figures["oldest_unsent"],
        pending=figures["pending"],
        overdue=overdue,
        since=since,
    )
