"""The standing cast: tenants acme and globex, each with an owner, admin, technician and auditor; an
outsider with no tenant; platform staff; and a suspended tenant (initech) with its admin.

Tests that need a real PostgreSQL, Redis or Chromium are marked and skipped, with the reason, when
those are missing. Set REQUIRE_FULL_SUITE=1 (as CI does) to turn such a skip into a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from tenants.models import Membership, Tenant
from tenants.roles import Role

PASSWORD = "correct-horse-battery-staple"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def pytest_configure(config: pytest.Config) -> None:
    # The cast's passwords are hashed many times per test: a fast hasher keeps the suite quick.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Likewise bcrypt's cost for backup accounts' login verifiers (tests/devices check the real cost).
    from devices import keys

    keys.BCRYPT_ROUNDS = 4


def _missing(marker: str) -> str | None:
    if marker == "postgres" and settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        return "needs PostgreSQL: set DATABASE_URL"
    if marker == "redis" and not settings.REDIS_URL:
        return "needs Redis: set REDIS_URL"
    if marker == "browser" and not CHROMIUM:
        return "needs Debian's chromium package"
    return None


def _missing_services(item: pytest.Item) -> list[str]:
    reasons = []
    for marker in ("postgres", "redis", "browser"):
        if item.get_closest_marker(marker) is not None and (reason := _missing(marker)):
            reasons.append(reason)
    return reasons


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("REQUIRE_FULL_SUITE") == "1":
        return
    for item in items:
        if reasons := _missing_services(item):
            item.add_marker(pytest.mark.skip(reason="; ".join(reasons)))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if os.environ.get("REQUIRE_FULL_SUITE") == "1" and (reasons := _missing_services(item)):
        pytest.fail("REQUIRE_FULL_SUITE=1 but " + "; ".join(reasons), pytrace=False)


@pytest.fixture
def eager():
    """Run Celery tasks inline (the broker is not what these tests are about)."""
    from portal.celery import app as celery_app

    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    """Start each test with an empty cache: throttling counts live there."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _fresh_channel_layers() -> Iterator[None]:
    """Give each test its own channel layer: a Redis layer keeps locks bound to the event loop it
    was first used on, and every async test runs on a new loop."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@dataclass
class TenantCast:
    tenant: Tenant
    owner: object
    admin: object
    technician: object
    auditor: object

    def member(self, role: str):
        return getattr(self, role)


def make_user(username: str, **extra):
    return get_user_model().objects.create_user(
        username=username, email=f"{username}@example.com", password=PASSWORD, **extra
    )


def make_tenant_cast(slug: str, name: str, status: str = Tenant.Status.ACTIVE) -> TenantCast:
    tenant = Tenant.objects.create(slug=slug, name=name, status=status)
    people = {}
    for role in Role:
        user = make_user(f"{slug}-{role.value}")
        Membership.objects.create(tenant=tenant, user=user, role=role)
        people[role.value] = user
    return TenantCast(tenant=tenant, **people)


@pytest.fixture
def acme(db) -> TenantCast:
    return make_tenant_cast("acme", "Acme Corporation")


@pytest.fixture
def globex(db) -> TenantCast:
    return make_tenant_cast("globex", "Globex Corporation")


@pytest.fixture
def initech(db) -> TenantCast:
    """A suspended tenant."""
    return make_tenant_cast("initech", "Initech Limited", status=Tenant.Status.SUSPENDED)


@pytest.fixture
def outsider(db):
    return make_user("outsider")


@pytest.fixture
def staff(db):
    return make_user("platform-staff", is_staff=True)


@pytest.fixture
def superuser(db):
    return make_user("platform-root", is_staff=True, is_superuser=True)


def client_for(user) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture
def as_user():
    """Return a logged-in test client for a user: as_user(acme.owner)."""
    return client_for
