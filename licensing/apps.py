from django.apps import AppConfig


class LicensingConfig(AppConfig):
    name = "licensing"
    verbose_name = "Licensing"

    def ready(self) -> None:
        # Usage reports name backup accounts and admins: their erasure must reach the licensing
        # service too, so the GDPR workflow waits for its receipt (docs/privacy.md).
        from licensing import erasure
        from tenants import personal_data

        personal_data.recipient_register(
            personal_data.Recipient(
                name=erasure.RECIPIENT_NAME,
                propagate=erasure.recipient_propagate,
                kinds=frozenset({personal_data.BACKUP_ACCOUNT, personal_data.ADMIN}),
            )
        )
