"""Trigram indexes for the device list's search, on PostgreSQL only.

Search is `icontains`, which Django turns into UPPER(column::text) LIKE UPPER('%term%'): no B-tree
index can serve a leading wildcard, so at 100,000 devices every search read the whole tenant
(168 ms). GIN indexes over pg_trgm trigrams of the same UPPER(...) expressions serve it. They are
not declared on the models because SQLite (the embedded default) has neither GIN nor pg_trgm.
Creating the extension needs a role allowed to; without it the migration warns and search keeps
working, only slower.
"""

import logging

from django.db import migrations, transaction

logger = logging.getLogger(__name__)

INDEXES = {
    "device_name_trgm": "devices_device USING gin (upper(name::text) gin_trgm_ops)",
    "account_username_trgm": "devices_backupaccount USING gin (upper(username::text) gin_trgm_ops)",
}


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    try:
        with transaction.atomic(using=schema_editor.connection.alias):
            schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except Exception as error:  # noqa: BLE001 - a missing privilege must not stop the deployment
        logger.warning("pg_trgm is not available (%s): device search will not use an index", error)
        return
    for name, definition in INDEXES.items():
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {definition}")


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name in INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [("devices", "0002_schedule_fleet_housekeeping")]

    operations = [migrations.RunPython(create, drop)]
