"""A tenant owner, in a real browser: log in, enrol TOTP, invite an admin, and watch the audit event
arrive on an open audit log page without reloading it."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from django_otp.oath import totp

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-results"


def _current_code(secret: str) -> str:
    key = base64.b32decode(secret.replace(" ", "").upper() + "=" * (-len(secret.replace(" ", "")) % 8))
    return f"{totp(key):06d}"


def test_it_logs_in_enrols_totp_invites_and_sees_the_audit_event_live(portal_for_browser, password, browser):
    context = browser.new_context()
    page = context.new_page()
    page.goto(portal_for_browser.url + "/login/")
    page.fill("input[name=username]", "acme-owner")
    page.fill("input[name=password]", password)
    page.click("main button[type=submit]")
    page.wait_for_url(portal_for_browser.url + "/t/acme/")
    assert page.inner_text("[data-testid=tenant-title]") == "Acme Backup"

    page.goto(portal_for_browser.url + "/account/two-factor/")
    assert page.locator("[data-testid=qr-code] svg").count() == 1
    secret = page.inner_text("[data-testid=totp-secret]").strip()
    page.fill("input[name=code]", _current_code(secret))
    page.click("text=Turn on two-factor authentication")
    page.wait_for_url("**/account/two-factor/recovery/")
    assert "recovery" in page.content().lower()

    audit = context.new_page()
    audit.goto(portal_for_browser.url + "/t/acme/audit/")
    audit.wait_for_selector("body[data-live-audit=connected]", timeout=10_000)
    rows_before = audit.locator("#audit-rows tr").count()

    page.goto(portal_for_browser.url + "/t/acme/team/")
    page.fill("input[name=email]", "new.admin@acme.example")
    page.select_option("#id_role", "admin")
    page.click("text=Send invitation")
    page.wait_for_selector("[data-testid='invitation-new.admin@acme.example']")

    # The audit page was not reloaded: the row arrives over the websocket.
    audit.wait_for_selector("#audit-rows tr.new-row >> text=team.invited", timeout=10_000)
    assert audit.locator("#audit-rows tr").count() == rows_before + 1
    SCREENSHOTS.mkdir(exist_ok=True)
    audit.screenshot(path=str(SCREENSHOTS / "audit-live.png"), full_page=True)
    context.close()
