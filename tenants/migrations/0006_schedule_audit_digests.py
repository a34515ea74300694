from django.db import migrations

from tenants.schedules import schedule_every, unschedule

TASK_NAME = "sign audit digests"


def schedule(apps, schema_editor):
    schedule_every(
        apps,
        name=TASK_NAME,
        task="tenants.tasks.sign_audit_digests",
        seconds=300,
        description="Sign the head of every audit chain that grew (verified by manage.py verify_audit).",
        expire_seconds=600,
    )


def unschedule_digests(apps, schema_editor):
    unschedule(apps, name=TASK_NAME)


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0005_audit_one_row_per_link"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(schedule, unschedule_digests)]
