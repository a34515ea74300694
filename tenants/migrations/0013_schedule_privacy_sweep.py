from django.db import migrations

from tenants.schedules import schedule_every, unschedule

TASK_NAME = "sweep privacy requests"


def schedule(apps, schema_editor):
    schedule_every(
        apps,
        name=TASK_NAME,
        task="tenants.tasks_erasure.privacy_sweep",
        seconds=30,
        description="Start erasures whose grace period ended, resume stalled ones, retry recipients, expire exports.",
        expire_seconds=60,
    )


def unschedule_sweep(apps, schema_editor):
    unschedule(apps, name=TASK_NAME)


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0012_erasure"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(schedule, unschedule_sweep)]
