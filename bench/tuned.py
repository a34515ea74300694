"""An experiment, not the product: the changes bench/README.md recommends for files the bench may not
edit, applied by patching at start-up so that their effect is measured before anyone edits the real
modules. Used by bench/tuned_asgi.py (servers) and `bench/pages.py --tuned` (pages).

Each patch has a name; BENCH_TUNE (comma-separated) picks them, all by default:

- `touch`: devices.services.devices_touch writes the buffered last-seen times with ONE
  `UPDATE ... FROM unnest(ids, times)` instead of QuerySet.bulk_update, whose CASE/WHEN expressions
  cost about a millisecond of Python per row and hold the worker's only database thread.
- `persistent`: keep the database connection (CONN_MAX_AGE 600, no health check). With
  CONN_MAX_AGE 0 every database_sync_to_async call of a consumer opens and closes a PostgreSQL
  connection (measured 17.7 ms a call against 1.0 ms on a kept connection, 2.6 ms with
  CONN_HEALTH_CHECKS, which sends `SELECT 1` first). The device consumers run all their database
  work in the one thread that thread-sensitive database_sync_to_async uses, so one connection per
  process is kept. (Applied by tuned_asgi before Django starts.)
- `pool` (not in the default set; an alternative to `persistent`): psycopg's pool through Django's
  OPTIONS {"pool": ...} (needs the psycopg-pool package), 4.2 ms a call.
- `freeze`: gc.freeze() once the application is loaded.
- `dispatch`: DeviceConsumer.dispatch without Channels' per-message `aclose_old_connections()`.
  Channels 4.2+ calls it before every handler, i.e. a hop into the database thread (a thread-pool
  future) for every frame, heartbeats included; the consumer's own database_sync_to_async calls
  already close stale connections around each database call.
- `inventory`: devices.ingest writes the buffered statuses of all devices in one transaction of
  three statements (one DELETE of the items no longer reported, one upsert of every item, one
  upsert of every vault) instead of about six statements per device, and skips a device whose
  status has not changed since the last write.
- `gclog` (measurement only): logs every garbage collection of generation 2 that took more than
  100 ms to stderr, with the number of objects tracked, to tell GC pauses from other stalls.
- `facets`: devices.selectors.device_facets reads the distinct OS and client versions with a loose
  index scan (a recursive CTE: one index probe per distinct value) instead of DISTINCT over every
  device of the tenant.
- `search`: trigram (pg_trgm) GIN indexes on UPPER(device name) and UPPER(account username), and
  devices.selectors.device_list looks up the matching accounts first, then filters devices with
  `name ILIKE ... OR account_id IN (<those ids>)`: two indexable conditions on one table (a
  BitmapOr) instead of an OR across the join, which no index can serve.
- `accounts`: devices.selectors.account_list counts devices with a correlated subquery, evaluated
  only for the page's rows, instead of COUNT over a join of every account with every device.
"""

from __future__ import annotations

import gc
import os
from datetime import datetime
from typing import Any

ALL = ("touch", "persistent", "freeze", "dispatch", "inventory", "facets", "accounts", "search", "gclog")
# What `search` needs in the database (PostgreSQL): trigram indexes that match Django's icontains,
# UPPER(column::text) LIKE UPPER('%term%'). A migration would add them with TrigramExtension and
# GinIndex(OpClass(Upper("name"), name="gin_trgm_ops")); the experiment creates them itself.
SEARCH_INDEXES = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX IF NOT EXISTS bench_device_name_trgm ON devices_device USING gin (upper(name::text) gin_trgm_ops)",
    "CREATE INDEX IF NOT EXISTS bench_account_username_trgm ON devices_backupaccount "
    "USING gin (upper(username::text) gin_trgm_ops)",
]
DROP_SEARCH_INDEXES = [
    "DROP INDEX IF EXISTS bench_device_name_trgm",
    "DROP INDEX IF EXISTS bench_account_username_trgm",
]


def configure_database(tunes: set[str]) -> None:
    """Change the database settings before Django is set up."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] != "django.db.backends.postgresql":
        return
    if "persistent" in tunes:
        database["CONN_MAX_AGE"] = 600
        database["CONN_HEALTH_CHECKS"] = False
    elif "pool" in tunes:
        database["CONN_MAX_AGE"] = 0
        database.setdefault("OPTIONS", {})["pool"] = {"min_size": 1, "max_size": 8}


def selected() -> set[str]:
    value = os.environ.get("BENCH_TUNE")
    if value is None:
        return set(ALL)
    return {name.strip() for name in value.split(",") if name.strip()}


def apply(tunes: set[str] | None = None) -> set[str]:
    """Patch the loaded project (Django must be set up); return the patches applied."""
    tunes = selected() if tunes is None else tunes
    from devices import selectors, services

    if "touch" in tunes:
        original_touch = services.devices_touch

        def devices_touch(*, seen: dict[int, datetime]) -> None:
            from django.db import connection

            if not seen:
                return
            if connection.vendor != "postgresql":
                original_touch(seen=seen)
                return
            with connection.cursor() as cursor:
                cursor.execute(
                    "UPDATE devices_device AS d SET last_seen_at = v.at "
                    "FROM unnest(%s::bigint[], %s::timestamptz[]) AS v(id, at) WHERE d.id = v.id",
                    [list(seen.keys()), list(seen.values())],
                )

        services.devices_touch = devices_touch
    if "facets" in tunes:
        original_facets = selectors.device_facets

        def device_facets(*, tenant: Any) -> dict[str, list[str]]:
            from django.db import connection

            if connection.vendor != "postgresql":
                return original_facets(tenant=tenant)
            return {
                "os": _distinct(tenant.pk, "os", descending=False),
                "client_version": _distinct(tenant.pk, "client_version", descending=True),
            }

        selectors.device_facets = device_facets
    if "accounts" in tunes:
        from django.db.models import Count, IntegerField, OuterRef, Q, Subquery, Value
        from django.db.models.functions import Coalesce

        from devices.models import BackupAccount, Device

        def account_list(*, tenant: Any, search: str = "") -> Any:
            accounts = BackupAccount.objects.filter(tenant=tenant)
            if search:
                accounts = accounts.filter(Q(username__icontains=search) | Q(display_name__icontains=search))
            per_account = (
                Device.objects.filter(account=OuterRef("pk"))
                .order_by()
                .values("account")
                .annotate(count=Count("id"))
                .values("count")
            )
            return accounts.annotate(
                device_count=Coalesce(Subquery(per_account, output_field=IntegerField()), Value(0))
            ).order_by("username")

        selectors.account_list = account_list
    if "search" in tunes:
        import dataclasses

        from django.db import connection
        from django.db.models import Q

        from devices.models import BackupAccount

        original_list = selectors.device_list

        def device_list(*, tenant: Any, filters: Any = None) -> Any:
            filters = filters if filters is not None else selectors.DeviceFilters()
            if not filters.search or connection.vendor != "postgresql":
                return original_list(tenant=tenant, filters=filters)
            account_ids = list(
                BackupAccount.objects.filter(tenant=tenant, username__icontains=filters.search).values_list(
                    "id", flat=True
                )[:1000]
            )
            devices = original_list(tenant=tenant, filters=dataclasses.replace(filters, search=""))
            return devices.filter(Q(name__icontains=filters.search) | Q(account_id__in=account_ids))

        selectors.device_list = device_list
    if "dispatch" in tunes:
        from channels.consumer import get_handler_name

        from devices.consumers import DeviceConsumer

        async def dispatch(self: Any, message: dict[str, Any]) -> None:
            handler = getattr(self, get_handler_name(message), None)
            if handler is None:
                raise ValueError(f"No handler for message type {message['type']}")
            await handler(message)

        DeviceConsumer.dispatch = dispatch  # type: ignore[method-assign]
    if "inventory" in tunes:
        from devices import ingest

        written: dict[int, str] = {}

        def write(seen: dict[int, datetime], statuses: dict[int, tuple[int, dict[str, Any]]]) -> None:
            import json

            services.devices_touch(seen=seen)
            changed = {}
            for device_pk, (tenant_id, status) in statuses.items():
                fingerprint = json.dumps([status.get("protected_items"), status.get("vaults")], sort_keys=True)
                if written.get(device_pk) != fingerprint:
                    changed[device_pk] = (tenant_id, status, fingerprint)
            if changed:
                inventory_apply_many({pk: (tenant, status) for pk, (tenant, status, _) in changed.items()})
                written.update({pk: fingerprint for pk, (_, _, fingerprint) in changed.items()})

        ingest._write = write
    if "gclog" in tunes:
        import sys
        import time

        started: list[float] = []

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            if info.get("generation") != 2:
                return
            if phase == "start":
                started[:] = [time.perf_counter()]
            elif started:
                took = time.perf_counter() - started[0]
                if took > 0.1:
                    sys.stderr.write(
                        f"gen2 collection {took * 1000:.0f} ms, collected {info.get('collected')}, "
                        f"tracked {len(gc.get_objects())}\n"
                    )
                    sys.stderr.flush()

        gc.callbacks.append(on_gc)
    if "freeze" in tunes:
        gc.collect()
        gc.freeze()
    return tunes


def inventory_apply_many(statuses: dict[int, tuple[int, dict[str, Any]]]) -> None:
    """Replace many devices' protected items and update their vaults in three statements."""
    from django.db import connection, transaction

    from devices import services
    from devices.models import Device, ProtectedItem, StorageVault

    if connection.vendor != "postgresql":
        for device_pk, (tenant_id, status) in statuses.items():
            services.inventory_apply(device_pk=device_pk, tenant_id=tenant_id, status=status)
        return
    accounts = dict(Device.objects.filter(pk__in=list(statuses)).values_list("pk", "account_id"))
    pairs_device, pairs_item, items, vaults = [], [], [], {}
    for device_pk, (tenant_id, status) in statuses.items():
        for item in status.get("protected_items") or []:
            pairs_device.append(device_pk)
            pairs_item.append(item["item_id"])
            items.append(
                ProtectedItem(
                    tenant_id=tenant_id,
                    device_id=device_pk,
                    item_id=item["item_id"],
                    name=item["name"],
                    engine=item["engine"],
                    size_bytes=item["size_bytes"],
                )
            )
        for vault in status.get("vaults") or []:
            account_id = accounts.get(device_pk)
            if account_id is not None:
                vaults[(account_id, vault["vault_id"])] = StorageVault(
                    tenant_id=tenant_id,
                    account_id=account_id,
                    vault_id=vault["vault_id"],
                    name=vault["name"],
                    kind=vault["kind"],
                    bytes_used=vault["bytes_used"],
                )
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "DELETE FROM devices_protecteditem AS p WHERE p.device_id = ANY(%s::bigint[]) AND NOT EXISTS "
                "(SELECT 1 FROM unnest(%s::bigint[], %s::text[]) AS r(device_id, item_id) "
                "WHERE r.device_id = p.device_id AND r.item_id = p.item_id)",
                [list(statuses), pairs_device, pairs_item],
            )
        ProtectedItem.objects.bulk_create(
            items,
            update_conflicts=True,
            unique_fields=["device", "item_id"],
            update_fields=["name", "engine", "size_bytes"],
            batch_size=2000,
        )
        StorageVault.objects.bulk_create(
            list(vaults.values()),
            update_conflicts=True,
            unique_fields=["account", "vault_id"],
            update_fields=["name", "kind", "bytes_used", "updated_at"],
            batch_size=2000,
        )


def create_search_indexes(drop: bool = False) -> None:
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        for statement in DROP_SEARCH_INDEXES if drop else SEARCH_INDEXES:
            cursor.execute(statement)
        if not drop:
            cursor.execute("ANALYZE devices_device")
            cursor.execute("ANALYZE devices_backupaccount")


def _distinct(tenant_pk: int, column: str, *, descending: bool, limit: int = 50) -> list[str]:
    """DISTINCT column for one tenant, one index probe per value (the (tenant, column, ...) index)."""
    from django.db import connection

    if column not in ("os", "client_version"):
        raise ValueError(column)
    order, step = ("DESC", "<") if descending else ("ASC", ">")
    sql = (
        f"WITH RECURSIVE t(v) AS ("
        f" (SELECT {column} FROM devices_device WHERE tenant_id = %s ORDER BY {column} {order} LIMIT 1)"
        f" UNION ALL"
        f" SELECT (SELECT d.{column} FROM devices_device d WHERE d.tenant_id = %s AND d.{column} {step} t.v"
        f" ORDER BY d.{column} {order} LIMIT 1) FROM t WHERE t.v IS NOT NULL"
        f") SELECT v FROM t WHERE v IS NOT NULL LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [tenant_pk, tenant_pk, limit])
        return [row[0] for row in cursor.fetchall()]
