from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    verbose_name = "Tenants"

    def ready(self) -> None:
        # What this app holds about people, for GDPR export, erasure and the residue scan.
        from tenants import (
            checks,  # noqa: F401 - registers the secrets-at-rest checks
            personal_data_handlers,
        )

        personal_data_handlers.register()
