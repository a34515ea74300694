"""Consent-gated staff access in real browsers: staff ask, the tenant's owner approves in another
browser, staff work under the banner, the owner revokes, and the consent log shows it all."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.browser


def _log_in(context, url: str, username: str, password: str):
    page = context.new_page()
    page.goto(url + "/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("main button[type=submit]")
    page.wait_for_load_state()
    return page


def test_it_lets_staff_in_only_while_the_owner_consents(portal_for_browser, password, browser):
    url = portal_for_browser.url
    staff_context, owner_context = browser.new_context(), browser.new_context()
    staff = _log_in(staff_context, url, "platform-staff", password)
    owner = _log_in(owner_context, url, "acme-owner", password)

    staff.goto(url + "/platform/")
    staff.click("[data-testid=request-access-acme]")
    staff.select_option("select[name=reason_code]", "customer_support")
    staff.fill("input[name=ticket_reference]", "SUP-1001")
    staff.fill("textarea[name=justification]", "Backups of the finance laptop fail every night.")
    staff.check("input[name=areas][value=devices]")
    staff.click("text=Send request")
    state = staff.locator("[data-testid^=my-state-]").first
    assert state.inner_text() == "Requested"
    request_id = re.sub(r"\D", "", state.get_attribute("data-testid") or "")
    # Before consent, the tenant is simply not there for staff.
    assert staff.goto(url + "/t/acme/devices/").status == 404

    owner.goto(url + "/t/acme/")
    assert owner.inner_text("[data-testid=staff-access-badge]") == "1"
    owner.click("[data-testid=nav-staff-access]")
    assert "Backups of the finance laptop fail every night." in owner.content()
    owner.click(f"[data-testid=approve-{request_id}]")
    owner.wait_for_selector(f"[data-testid=grant-{request_id}]")

    staff.goto(url + "/platform/access/")
    staff.click(f"[data-testid=enter-{request_id}]")
    staff.goto(url + "/t/acme/devices/")
    banner = staff.inner_text("[data-testid=staff-banner]")
    assert f"grant #{request_id}" in banner and "read-only: devices" in banner
    assert "Devices" in staff.content()

    owner.click(f"[data-testid=revoke-{request_id}]")
    owner.wait_for_selector(f"[data-testid=state-{request_id}] >> text=Revoked")
    assert staff.goto(url + "/t/acme/devices/").status == 404

    owner.goto(url + "/t/acme/staff-access/log/")
    actions = owner.locator("#consent-rows tr").evaluate_all("rows => rows.map(row => row.dataset.action)")
    for action in (
        "staff_access.requested",
        "staff_access.approved",
        "staff_access.used",
        "staff_access.revoked",
        "staff_access.denied",
    ):
        assert action in actions, f"{action} missing from the consent log: {actions}"
    staff_context.close()
    owner_context.close()
