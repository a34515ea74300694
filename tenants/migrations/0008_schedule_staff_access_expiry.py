from django.db import migrations

from tenants.schedules import schedule_every, unschedule

TASK_NAME = "lapse and expire staff access"


def schedule(apps, schema_editor):
    schedule_every(
        apps,
        name=TASK_NAME,
        task="tenants.tasks.lapse_and_expire_staff_access",
        seconds=60,
        description="Lapse unanswered staff access requests and end grants past their expiry.",
        expire_seconds=120,
    )


def unschedule_expiry(apps, schema_editor):
    unschedule(apps, name=TASK_NAME)


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0007_staff_access"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(schedule, unschedule_expiry)]
