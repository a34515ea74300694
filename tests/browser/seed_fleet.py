"""Seed a backup account for the fleet browser test, after seed_world.py. Run with the server's environment.

The device is not created here: the reference agent registers itself with the account's password.
"""

import json
import os
import sys

import django

sys.path.insert(0, os.getcwd())
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
django.setup()

from devices import services  # noqa: E402
from tenants.audit import SYSTEM  # noqa: E402
from tenants.models import Tenant  # noqa: E402

tenant_slug, username, password = sys.argv[1:4]
account = services.account_create(
    actor=SYSTEM,
    tenant=Tenant.objects.get(slug=tenant_slug),
    username=username,
    password=password,
    display_name="Reception office",
    max_devices=3,
)
print(json.dumps({"tenant": tenant_slug, "account": account.username, "account_id": account.pk}))
