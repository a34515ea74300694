"""System checks for the secrets-at-rest keys (tenants/secrets.py)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from tenants import secrets


@register(Tags.security)
def secrets_keys_parse(app_configs: Any, **kwargs: Any) -> list[Error]:
    """Refuse a malformed SECRETS_KEYS at start rather than at the first secret stored."""
    if not settings.SECRETS_KEYS:
        return []
    try:
        secrets.parse_keys(settings.SECRETS_KEYS, separator=",", source="SECRETS_KEYS")
    except secrets.SecretsConfigurationError as error:
        return [Error(str(error), id="tenants.E001")]
    return []


@register(Tags.security, deploy=True)
def secrets_keys_configured(app_configs: Any, **kwargs: Any) -> list[Warning]:
    if settings.SECRETS_KEYS:
        return []
    return [
        Warning(
            "SECRETS_KEYS is not set: secrets at rest (TOTP seeds, vault credentials) are encrypted with a key "
            f"file next to the data ({settings.SECRETS_KEY_FILE}).",
            hint="Generate a key with `manage.py rotate_secrets_key --generate`, set SECRETS_KEYS on every "
            "process, and keep it out of the database's backups.",
            id="tenants.W001",
        )
    ]
