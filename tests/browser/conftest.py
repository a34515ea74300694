"""Browser tests: a real portal (tests/live.py) driven by Debian's Chromium through Playwright.
Nothing is downloaded at test time."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CHROMIUM
from tests.live import LivePortal, live_portal

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# A tenant "acme" with its owner, and a platform staff member, all with the given password.
SEED_WORLD = """
from django.contrib.auth import get_user_model
from tenants.models import Membership, Tenant

users = get_user_model().objects
tenant = Tenant.objects.create(
    slug="acme", name="Acme Corporation", display_name="Acme Backup", accent_colour="#b42318"
)
owner = users.create_user("acme-owner", "owner@acme.example", arguments["password"])
Membership.objects.create(tenant=tenant, user=owner, role="owner")
users.create_user("platform-staff", "staff@portal.example", arguments["password"], is_staff=True)
print(json.dumps({"tenant": tenant.slug, "owner": owner.username}))
"""


@pytest.fixture
def password() -> str:
    return secrets.token_urlsafe(12)


@pytest.fixture
def portal_for_browser(tmp_path: Path, password: str) -> Iterator[LivePortal]:
    with live_portal(tmp_path / "portal", seed=SEED_WORLD, seed_arguments={"password": password}) as portal:
        yield portal


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
