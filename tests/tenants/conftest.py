"""Fixtures of the GDPR tests, shared by their modules."""

from __future__ import annotations

import pytest

from licensing.erasure import RECIPIENT_NAME
from tenants import personal_data
from tests.tenants.erasure_helpers import FakeLicensing


@pytest.fixture
def without_licensing_recipient():
    """Take the real licensing recipient out of the registry for a test about the workflow itself,
    which runs no licensing service (tests/licensing/test_erasure_recipient.py runs one)."""
    real = personal_data.recipient_get(RECIPIENT_NAME)
    personal_data.recipient_unregister(RECIPIENT_NAME)
    yield
    if real is not None:
        personal_data.recipient_register(real)


@pytest.fixture
def licensing(without_licensing_recipient):
    """A stand-in recipient ("licensing-test", an HTTP endpoint on 127.0.0.1 that can go down) in
    place of the real licensing recipient, for tests of how the workflow drives recipients."""
    fake = FakeLicensing().start()
    fake.register()
    yield fake
    personal_data.recipient_unregister("licensing-test")
    fake.stop()
