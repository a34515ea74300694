"""Encrypt both sides' licence keys at rest (tenants.secrets), the rows already stored included.

The rows are read with SQL (the field would try to decrypt the plaintext) and written back through
the historical model, whose field encrypts with the same context as the current one. A value that is
already a token is left alone, so running the migration again changes nothing.
"""

from django.db import migrations

import tenants.secrets

TABLES = (("PortalLicence", "licensing_portallicence"), ("RegisteredPortal", "licensing_registeredportal"))


def encrypt_keys(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        for model_name, table in TABLES:
            model = apps.get_model("licensing", model_name)
            cursor.execute(f"SELECT id, licence_key FROM {table}")  # noqa: S608 (constant table names)
            for pk, stored in cursor.fetchall():
                if stored and not tenants.secrets.is_token(stored):
                    model.objects.filter(pk=pk).update(licence_key=stored)


class Migration(migrations.Migration):
    dependencies = [
        ("licensing", "0002_schedule_usage_reports"),
    ]

    operations = [
        migrations.AlterField(
            model_name="portallicence",
            name="licence_key",
            field=tenants.secrets.EncryptedTextField(),
        ),
        migrations.AlterField(
            model_name="registeredportal",
            name="licence_key",
            field=tenants.secrets.EncryptedTextField(),
        ),
        migrations.RunPython(encrypt_keys, migrations.RunPython.noop),
    ]
