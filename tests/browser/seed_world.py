"""Seed a portal started by the browser tests: a tenant and its owner. Run with the server's environment."""

import json
import os
import sys

import django

sys.path.insert(0, os.getcwd())
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
django.setup()

from django.contrib.auth import get_user_model  # noqa: E402

from tenants.models import Membership, Tenant  # noqa: E402

password = sys.argv[1]
tenant = Tenant.objects.create(
    slug="acme", name="Acme Corporation", display_name="Acme Backup", accent_colour="#b42318"
)
owner = get_user_model().objects.create_user("acme-owner", "owner@acme.example", password)
Membership.objects.create(tenant=tenant, user=owner, role="owner")
staff = get_user_model().objects.create_user("platform-staff", "staff@portal.example", password, is_staff=True)
print(json.dumps({"tenant": tenant.slug, "owner": owner.username, "staff": staff.username}))
