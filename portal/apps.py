from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Portal"

    def ready(self) -> None:
        # Load the Celery app in every Django process, so that shared tasks are sent through it.
        from portal import celery  # noqa: F401
