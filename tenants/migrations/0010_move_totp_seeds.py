"""Move every django-otp TOTPDevice into AuthenticatorDevice, whose seed column is encrypted at rest.

The historical model's `key` field is tenants.secrets.EncryptedTextField, so saving encrypts it.
Sessions verified with a moved device name its old id, and are asked for a code again.
"""

from django.db import migrations

FIELDS = (
    "user_id",
    "name",
    "confirmed",
    "throttling_failure_timestamp",
    "throttling_failure_count",
    "created_at",
    "last_used_at",
    "key",
    "step",
    "t0",
    "digits",
    "tolerance",
    "drift",
    "last_t",
)


def move_seeds(apps, schema_editor):
    TOTPDevice = apps.get_model("otp_totp", "TOTPDevice")
    AuthenticatorDevice = apps.get_model("tenants", "AuthenticatorDevice")
    for device in TOTPDevice.objects.order_by("id"):
        moved = AuthenticatorDevice.objects.create(**{field: getattr(device, field) for field in FIELDS})
        # created_at is auto_now_add: put the original time back.
        AuthenticatorDevice.objects.filter(pk=moved.pk).update(created_at=device.created_at)
        device.delete()


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0009_authenticator_device"),
        ("otp_totp", "0003_add_timestamps"),
    ]

    operations = [migrations.RunPython(move_seeds, migrations.RunPython.noop)]
