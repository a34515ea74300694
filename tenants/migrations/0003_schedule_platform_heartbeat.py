from django.db import migrations

from tenants.schedules import schedule_every, unschedule

TASK_NAME = "platform heartbeat"


def schedule_heartbeat(apps, schema_editor):
    schedule_every(
        apps,
        name=TASK_NAME,
        task="tenants.tasks.record_heartbeat",
        seconds=30,
        description="Record that a Celery worker is alive (shown as platform health).",
        # A heartbeat that waited longer than this in the queue proves nothing: drop it.
        expire_seconds=60,
    )


def unschedule_heartbeat(apps, schema_editor):
    unschedule(apps, name=TASK_NAME)


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0002_service_heartbeat"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.RunPython(schedule_heartbeat, unschedule_heartbeat),
    ]
