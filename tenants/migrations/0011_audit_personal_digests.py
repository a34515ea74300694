from django.db import migrations, models


class Migration(migrations.Migration):
    """Add encoding version 2 of the audit chain; rows already written keep verifying as version 1."""

    dependencies = [("tenants", "0010_move_totp_seeds")]

    operations = [
        # Existing rows were hashed with every field in plain: they are version 1.
        migrations.AddField(
            model_name="auditevent", name="hash_version", field=models.PositiveSmallIntegerField(default=1)
        ),
        migrations.AlterField(
            model_name="auditevent", name="hash_version", field=models.PositiveSmallIntegerField(default=2)
        ),
        migrations.AddField(
            model_name="auditevent", name="personal_digests", field=models.JSONField(blank=True, default=dict)
        ),
        migrations.AddField(
            model_name="auditevent", name="personal_salts", field=models.JSONField(blank=True, default=dict)
        ),
        migrations.AddField(
            model_name="auditevent", name="personal_erased_at", field=models.DateTimeField(blank=True, null=True)
        ),
    ]
