"""Reads of accounts, devices, commands and jobs. Each takes the tenant: another tenant's row is a 404."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Q, QuerySet
from django.http import Http404

from devices.models import BackupAccount, Command, Device, Job, ProtectedItem, StorageVault
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


def account_list(*, tenant: Tenant, search: str = "") -> QuerySet[BackupAccount]:
    accounts = BackupAccount.objects.filter(tenant=tenant, erasure_pending=False)
    if search:
        accounts = accounts.filter(Q(username__icontains=search) | Q(display_name__icontains=search))
    return accounts.defer(*ACCOUNT_HEAVY_FIELDS).annotate(device_count=Count("devices")).order_by("username")


def account_get(*, tenant: Tenant, account_id: int) -> BackupAccount:
    try:
        return BackupAccount.objects.get(tenant=tenant, pk=account_id, erasure_pending=False)
    except (BackupAccount.DoesNotExist, ValueError):
        raise Http404 from None


def vaults_of(*, account: BackupAccount) -> QuerySet[StorageVault]:
    return StorageVault.objects.filter(account=account).order_by("name")


@dataclass(frozen=True)
class DeviceFilters:
    search: str = ""
    account_id: int | None = None
    live: bool | None = None
    os: str = ""
    client_version: str = ""
    failing: bool | None = None
    sort: str = "name"


def device_list(*, tenant: Tenant, filters: DeviceFilters = DeviceFilters()) -> QuerySet[Device]:
    """Return the tenant's devices filtered and sorted; every filter and sort has an index behind it."""
    devices = (
        Device.objects.filter(tenant=tenant, account__erasure_pending=False)
        .select_related("account")
        .defer(*_DEVICE_ACCOUNT_HEAVY_FIELDS)
    )
    if filters.search:
        devices = devices.filter(Q(name__icontains=filters.search) | Q(account__username__icontains=filters.search))
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
    return devices.order_by(*DEVICE_SORTS.get(filters.sort, DEVICE_SORTS["name"]))


def device_get(*, tenant: Tenant, device_pk: int) -> Device:
    try:
        return (
            Device.objects.select_related("account")
            .defer(*_DEVICE_ACCOUNT_HEAVY_FIELDS)
            .get(tenant=tenant, pk=device_pk, account__erasure_pending=False)
        )
    except (Device.DoesNotExist, ValueError):
        raise Http404 from None


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
    devices = Device.objects.filter(tenant=tenant)
    return {
        "os": list(devices.order_by("os").values_list("os", flat=True).distinct()[:50]),
        "client_version": list(
            devices.order_by("-client_version").values_list("client_version", flat=True).distinct()[:50]
        ),
    }


def fleet_summary(*, tenant: Tenant) -> dict[str, int]:
    devices = Device.objects.filter(tenant=tenant, revoked_at__isnull=True)
    counts = devices.aggregate(
        total=Count("id"),
        live=Count("id", filter=Q(is_live=True)),
        failing=Count("id", filter=Q(has_failing_jobs=True)),
    )
    counts["accounts"] = BackupAccount.objects.filter(tenant=tenant).count()
    return counts
