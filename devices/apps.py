from django.apps import AppConfig


class DevicesConfig(AppConfig):
    name = "devices"
    verbose_name = "Devices"

    def ready(self) -> None:
        # What this app holds about a backup account, for GDPR export, erasure and the residue scan.
        from devices import personal_data

        personal_data.register()
