"""Fixtures of the GDPR tests, shared by their modules."""

from __future__ import annotations

import pytest

from portal.celery import app as celery_app
from tests.tenants.erasure_helpers import FakeLicensing


@pytest.fixture
def eager():
    """Run Celery tasks inline (the broker is not what these tests are about)."""
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


@pytest.fixture
def licensing():
    fake = FakeLicensing().start()
    fake.register()
    yield fake
    from tenants import personal_data

    personal_data.recipient_unregister("licensing-test")
    fake.stop()
