from django.db import migrations, models


class Migration(migrations.Migration):
    # Apart from 0004: PostgreSQL refuses to alter a table in the transaction that just updated its rows.
    dependencies = [("tenants", "0004_audit_hash_chain")]

    operations = [
        migrations.AddConstraint(
            model_name="auditevent",
            constraint=models.UniqueConstraint(fields=("chain", "sequence"), name="audit_one_row_per_link"),
        ),
    ]
