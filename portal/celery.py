"""The Celery application: tasks live in each app's tasks.py and are found by autodiscovery."""

import os

from celery import Celery
from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

if settings.CELERY_BROKER_URL.startswith("filesystem://"):
    for folder in {"data_folder_in", "data_folder_out", "processed_folder", "control_folder"}:
        os.makedirs(str(settings.CELERY_BROKER_TRANSPORT_OPTIONS[folder]), exist_ok=True)
