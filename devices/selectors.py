"""Reads of accounts, devices, commands and jobs. Each takes the tenant: another tenant's row is a 404."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import connection
from django.db.models import Count, IntegerField, Model, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import Http404

from devices.models import BackupAccount, Command, Device, Job, ProtectedItem, StorageVault
from portal import keyset
from portal.rows import Columns, instances_from_row
from tenants.models import Tenant

# Account columns that lists and device pages never show: up to 1 MiB of opaque secrets, and a hash.
ACCOUNT_HEAVY_FIELDS = ("profile_secrets", "login_verifier")
_DEVICE_ACCOUNT_HEAVY_FIELDS = tuple(f"account__{field}" for field in ACCOUNT_HEAVY_FIELDS)

DEVICE_SORTS = {
    "name": ("name", "id"),
    "-name": ("-name", "-id"),
    "last_seen": ("last_seen_at", "id"),
    "-last_seen": ("-last_seen_at", "-id"),
    "os": ("os", "name", "id"),
    "version": ("client_version", "name", "id"),
}


ModelT = TypeVar("ModelT", bound=Model)
# Rows matched by a search term among accounts' usernames before the devices are filtered by them.
SEARCH_ACCOUNTS_MAX = 1000


def page_of(queryset: QuerySet[ModelT], *, offset: int, limit: int) -> list[ModelT]:
    """Return `limit` rows from `offset` on, reading deep pages through the sort's index.

    A plain OFFSET fetches, joins and throws away every row before the page; here only the ids are
    read up to the offset (the list's sort indexes end in `id`), then the page's rows by id.
    """
    if offset == 0:
        return list(queryset[:limit])
    ids = list(queryset.values_list("pk", flat=True)[offset : offset + limit])
    rows = {row.pk: row for row in queryset.order_by().filter(pk__in=ids)}
    return [rows[pk] for pk in ids if pk in rows]


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    number: int
    has_next: bool
    has_previous: bool
    # Cursors for the Next / Previous links, when the list's order allows keyset paging.
    next_cursor: str = ""
    previous_cursor: str = ""


def page_at(queryset: QuerySet[Any], *, number: int, size: int, after: str = "", before: str = "") -> Page:
    """Return page `number` of `size` rows and whether others follow or precede, never counting.

    With a cursor (`after` / `before`, from a Next / Previous link) the page is read by keyset
    (portal/keyset.py) and costs what page 1 costs at any depth; without one, by offset. Raises
    keyset.InvalidCursor for a cursor that cannot be read: the caller decides what that means.
    """
    if (after or before) and keyset.orderable(queryset):
        rows = keyset.page(queryset, after=after, before=before, limit=size + 1)
        if before:
            # Going back: the extra row read shows whether more precede; the page is the last `size`.
            more_before, rows = len(rows) > size, rows[-size:]
            return _with_cursors(queryset, rows, number, has_next=True, has_previous=more_before and number > 1)
        return _with_cursors(queryset, rows[:size], number, has_next=len(rows) > size, has_previous=number > 1)
    rows = page_of(queryset, offset=(number - 1) * size, limit=size + 1)
    return _with_cursors(queryset, rows[:size], number, has_next=len(rows) > size, has_previous=number > 1)


def _with_cursors(queryset: QuerySet[Any], rows: list[Any], number: int, *, has_next: bool, has_previous: bool) -> Page:
    page = Page(rows, number, has_next=has_next, has_previous=has_previous)
    if not rows or not keyset.orderable(queryset):
        return page
    # Page 1 needs no cursor: Previous from page 2 is the plain first page.
    return Page(
        rows,
        number,
        has_next=has_next,
        has_previous=has_previous,
        next_cursor=keyset.cursor_of(queryset, rows[-1]) if has_next else "",
        previous_cursor=keyset.cursor_of(queryset, rows[0]) if has_previous and number > 2 else "",
    )


def account_list(*, tenant: Tenant, search: str = "") -> QuerySet[BackupAccount]:
    accounts = BackupAccount.objects.filter(tenant=tenant, erasure_pending=False)
    if search:
        accounts = accounts.filter(Q(username__icontains=search) | Q(display_name__icontains=search))
    # A correlated count, evaluated for the page's rows only; COUNT over a join grouped every
    # account of the tenant with every device before the page was cut (120 ms at 20,000 accounts).
    devices_per_account = (
        Device.objects.filter(account=OuterRef("pk")).order_by().values("account").annotate(n=Count("id")).values("n")
    )
    return (
        accounts.defer(*ACCOUNT_HEAVY_FIELDS)
        .annotate(device_count=Coalesce(Subquery(devices_per_account, output_field=IntegerField()), Value(0)))
        .order_by("username")
    )


def account_get(*, tenant: Tenant, account_id: int) -> BackupAccount:
    try:
        return BackupAccount.objects.get(tenant=tenant, pk=account_id, erasure_pending=False)
    except (BackupAccount.DoesNotExist, ValueError):
        raise Http404 from None


def vaults_of(*, account: BackupAccount) -> QuerySet[StorageVault]:
    # The credentials are encrypted at rest and no list shows them: they are not even decrypted.
    return StorageVault.objects.filter(account=account).defer("credentials").order_by("name")


def vault_get(*, account: BackupAccount, vault_id: str) -> StorageVault:
    try:
        return StorageVault.objects.select_related("tenant").get(account=account, vault_id=vault_id)
    except StorageVault.DoesNotExist:
        raise Http404 from None


def vault_credentials(*, vault: StorageVault) -> dict[str, str]:
    """Return the storage credentials an administrator stored for a vault (decrypted), or {}."""
    return json.loads(vault.credentials) if vault.credentials else {}


@dataclass(frozen=True)
class DeviceFilters:
    search: str = ""
    account_id: int | None = None
    live: bool | None = None
    os: str = ""
    client_version: str = ""
    failing: bool | None = None
    sort: str = "name"


def hidden_accounts(*, tenant: Tenant) -> list[int]:
    """Return the ids of the tenant's accounts held by an erasure request (few, usually none)."""
    return list(BackupAccount.objects.filter(tenant=tenant, erasure_pending=True).values_list("id", flat=True))


def device_list(*, tenant: Tenant, filters: DeviceFilters = DeviceFilters()) -> QuerySet[Device]:
    """Return the tenant's devices filtered and sorted; every filter and sort has an index behind it."""
    devices = Device.objects.filter(tenant=tenant).select_related("account").defer(*_DEVICE_ACCOUNT_HEAVY_FIELDS)
    # Devices of accounts held by an erasure are hidden. Excluding those few accounts by id, rather
    # than joining every device to its account, keeps a deep page to a scan of the sort's index
    # (page 500 of 100,000 devices: the join cost 20 ms of 57).
    if hidden := hidden_accounts(tenant=tenant):
        devices = devices.exclude(account_id__in=hidden)
    if filters.search:
        # Two conditions on the device table, each served by a trigram index on PostgreSQL (a
        # BitmapOr), rather than an OR across the join to accounts, which no index can serve.
        matching_accounts = BackupAccount.objects.filter(tenant=tenant, username__icontains=filters.search)
        account_ids = list(matching_accounts.values_list("id", flat=True)[:SEARCH_ACCOUNTS_MAX])
        devices = devices.filter(Q(name__icontains=filters.search) | Q(account_id__in=account_ids))
    if filters.account_id is not None:
        devices = devices.filter(account_id=filters.account_id)
    if filters.live is not None:
        devices = devices.filter(is_live=filters.live)
    if filters.os:
        devices = devices.filter(os=filters.os)
    if filters.client_version:
        devices = devices.filter(client_version=filters.client_version)
    if filters.failing is not None:
        devices = devices.filter(has_failing_jobs=filters.failing)
    # NULLs placed explicitly (never-seen devices last going up), as keyset paging expects.
    return devices.order_by(*keyset.ordering(*DEVICE_SORTS.get(filters.sort, DEVICE_SORTS["name"])))


@functools.cache
def _device_read() -> tuple[tuple[Columns, Columns], str]:
    columns = device, account = Columns(Device, "d"), Columns(BackupAccount, "a", skip=ACCOUNT_HEAVY_FIELDS)
    sql = (
        f"SELECT {device.select()}, {account.select()} FROM {device.table} d "  # noqa: S608 - names from models
        f"JOIN {account.table} a ON a.id = d.account_id "
        "WHERE d.tenant_id = %s AND d.id = %s AND NOT a.erasure_pending"
    )
    return columns, sql


def device_get(*, tenant: Tenant, device_pk: int) -> Device:
    """The tenant's device with its account (heavy fields deferred), unless an erasure holds it.

    One hand-written statement: every device route and every command issued reads this row, and
    the ORM's compiled join of the two wide tables cost a command's request more than the query.
    """
    try:
        device_pk = int(device_pk)
    except (TypeError, ValueError):
        raise Http404 from None
    columns, sql = _device_read()
    with connection.cursor() as cursor:
        cursor.execute(sql, [tenant.pk, device_pk])
        row = cursor.fetchone()
    if row is None:
        raise Http404
    device, account = instances_from_row(columns, row)
    assert isinstance(device, Device) and isinstance(account, BackupAccount)
    device.account = account
    device.tenant = tenant  # the one it was looked up in: no query when a service reads device.tenant
    return device


def devices_for_bulk(*, tenant: Tenant, device_pks: list[int] | None = None, account_id: int | None = None):
    """Return the tenant's unrevoked devices named by ids or by account, for a bulk command."""
    devices = Device.objects.filter(
        tenant=tenant, revoked_at__isnull=True, account__erasure_pending=False
    ).select_related("tenant")
    if device_pks is not None:
        devices = devices.filter(pk__in=device_pks)
    if account_id is not None:
        devices = devices.filter(account_id=account_id)
    return devices.order_by("id")


def jobs_of_account(*, account: BackupAccount) -> QuerySet[Job]:
    return (
        Job.objects.filter(tenant_id=account.tenant_id, device__account=account)
        .select_related("device")
        .order_by("-started_at", "-id")
    )


def protected_items_of(*, device: Device) -> QuerySet[ProtectedItem]:
    return ProtectedItem.objects.filter(device=device).order_by("name")


def commands_of(*, device: Device) -> QuerySet[Command]:
    return Command.objects.filter(device=device).select_related("issued_by").order_by("-created_at", "-id")


def command_get(*, tenant: Tenant, command_pk: int) -> Command:
    try:
        return Command.objects.select_related("device").get(
            tenant=tenant, pk=command_pk, device__account__erasure_pending=False
        )
    except (Command.DoesNotExist, ValueError):
        raise Http404 from None


def jobs_of(*, device: Device) -> QuerySet[Job]:
    return Job.objects.filter(device=device).order_by("-started_at", "-id")


def job_get(*, tenant: Tenant, job_pk: int) -> Job:
    try:
        return Job.objects.select_related("device").get(
            tenant=tenant, pk=job_pk, device__account__erasure_pending=False
        )
    except (Job.DoesNotExist, ValueError):
        raise Http404 from None


def device_facets(*, tenant: Tenant) -> dict[str, list[str]]:
    """Return the distinct OS and client versions of a tenant's devices, for filter menus."""
    if connection.vendor == "postgresql":
        return {
            "os": _distinct_values(tenant_pk=tenant.pk, column="os", descending=False),
            "client_version": _distinct_values(tenant_pk=tenant.pk, column="client_version", descending=True),
        }
    devices = Device.objects.filter(tenant=tenant)
    return {
        "os": list(devices.order_by("os").values_list("os", flat=True).distinct()[:FACETS_MAX]),
        "client_version": list(
            devices.order_by("-client_version").values_list("client_version", flat=True).distinct()[:FACETS_MAX]
        ),
    }


FACETS_MAX = 50
_FACET_COLUMNS = ("os", "client_version")  # each has a (tenant, column, ...) index


def _distinct_values(*, tenant_pk: int, column: str, descending: bool) -> list[str]:
    """Return a column's distinct values for one tenant with one index probe per value.

    PostgreSQL has no skip scan: DISTINCT read every device of the tenant (73 ms at 100,000). This
    recursive query jumps from each value to the next one through the (tenant, column) index.
    """
    if column not in _FACET_COLUMNS:
        raise ValueError(column)
    order, step = ("DESC", "<") if descending else ("ASC", ">")
    # The column and the order come from the allow-list above, never from the request.
    sql = (
        f"WITH RECURSIVE t(v) AS ("  # noqa: S608
        f" (SELECT {column} FROM devices_device WHERE tenant_id = %s ORDER BY {column} {order} LIMIT 1)"
        f" UNION ALL"
        f" SELECT (SELECT d.{column} FROM devices_device d WHERE d.tenant_id = %s AND d.{column} {step} t.v"
        f" ORDER BY d.{column} {order} LIMIT 1) FROM t WHERE t.v IS NOT NULL"
        f") SELECT v FROM t WHERE v IS NOT NULL LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [tenant_pk, tenant_pk, FACETS_MAX])
        return [row[0] for row in cursor.fetchall()]


def fleet_summary(*, tenant: Tenant) -> dict[str, int]:
    devices = Device.objects.filter(tenant=tenant, revoked_at__isnull=True)
    counts = devices.aggregate(
        total=Count("id"),
        live=Count("id", filter=Q(is_live=True)),
        failing=Count("id", filter=Q(has_failing_jobs=True)),
    )
    counts["accounts"] = BackupAccount.objects.filter(tenant=tenant).count()
    return counts
