from django.db import migrations

from tenants.schedules import schedule_every, unschedule

SCHEDULES = [
    {
        "name": "expire device commands",
        "task": "devices.tasks.expire_commands",
        "seconds": 60,
        "description": "Mark commands that expired before a device acknowledged them.",
        "expire_seconds": 120,
    },
    {
        "name": "mark silent devices offline",
        "task": "devices.tasks.mark_silent_devices_offline",
        "seconds": 60,
        "description": "Mark devices offline whose connection ended without a goodbye.",
        "expire_seconds": 120,
    },
]


def schedule(apps, schema_editor):
    for entry in SCHEDULES:
        schedule_every(apps, **entry)


def unschedule_all(apps, schema_editor):
    for entry in SCHEDULES:
        unschedule(apps, name=entry["name"])


class Migration(migrations.Migration):
    dependencies = [
        ("devices", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(schedule, unschedule_all)]
