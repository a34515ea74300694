"""The authenticator-app device, with its TOTP seed encrypted at rest.

django-otp's own TOTPDevice keeps each seed as plain hex in its table, where anyone with a copy of
the database could read it and mint codes. AuthenticatorDevice has the same fields and the very same
verification (its methods are TOTPDevice's, so fixes in django-otp reach it), but its `key` column
holds a tenants.secrets token. The migration that added it moved every existing TOTPDevice here.
"""

from __future__ import annotations

from django.db import models
from django_otp.models import Device, ThrottlingMixin, TimestampMixin
from django_otp.plugins.otp_totp.models import TOTPDevice, default_key, key_validator

from tenants.secrets import EncryptedTextField


class AuthenticatorDevice(TimestampMixin, ThrottlingMixin, Device):
    key = EncryptedTextField(
        validators=[key_validator],
        default=default_key,
        help_text="A hex-encoded secret key of up to 40 bytes, encrypted at rest.",
    )
    step = models.PositiveSmallIntegerField(default=30, help_text="The time step in seconds.")
    t0 = models.BigIntegerField(default=0, help_text="The Unix time at which to begin counting steps.")
    digits = models.PositiveSmallIntegerField(choices=[(6, 6), (8, 8)], default=6)
    tolerance = models.PositiveSmallIntegerField(default=1)
    drift = models.SmallIntegerField(default=0)
    last_t = models.BigIntegerField(default=-1)

    class Meta(Device.Meta):
        verbose_name = "authenticator device"

    # Borrowed, not copied: django-otp's own TOTP logic, reading the decrypted `key`.
    bin_key = TOTPDevice.bin_key
    verify_token = TOTPDevice.verify_token
    get_throttle_factor = TOTPDevice.get_throttle_factor
    config_url = TOTPDevice.config_url
    _read_str_from_settings = TOTPDevice._read_str_from_settings
