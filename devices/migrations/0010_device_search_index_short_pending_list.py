"""The device name search index keeps a short pending list (PostgreSQL only).

Every connect, disconnect and heartbeat rewrites a device row, and PostgreSQL enters a rewritten
row into every index of the table, the trigram index too. That index gathers new entries in a
pending list that each search reads through, and with the default limit (4 MB) the list is merged
only once it is full: after the bench's reconnect storms a search for a rare name took 99 ms.
At 256 kB the list is merged sixteen times as often, in smaller batches, and a search reads at
most that much (measured after 33,000 row updates: 15.8 ms at the default, 6.9 ms at 256 kB,
1.2 ms merged). Entering each row at once (`fastupdate = off`, as for accounts) would cost every
heartbeat flush a GIN insertion per trigram of the name.
"""

from django.db import migrations

PENDING_LIST_KIB = 256


def set_limit(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        f"ALTER INDEX IF EXISTS device_name_trgm SET (gin_pending_list_limit = {PENDING_LIST_KIB})"
    )
    # A list longer than the new limit stays until the next insertion: merge it now.
    schema_editor.execute(
        "SELECT gin_clean_pending_list('device_name_trgm') WHERE to_regclass('device_name_trgm') IS NOT NULL"
    )


def reset_limit(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER INDEX IF EXISTS device_name_trgm RESET (gin_pending_list_limit)")


class Migration(migrations.Migration):
    dependencies = [("devices", "0009_account_search_index_without_pending_list")]

    operations = [migrations.RunPython(set_limit, reset_limit)]
