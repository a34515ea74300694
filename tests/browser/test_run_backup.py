"""A tenant owner, in a real browser, runs a backup on a device where the real reference agent runs,
and watches the job start, progress and finish on the device page without reloading it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.conftest import SEED_WORLD
from tests.live import REPO, LivePortal, live_portal

pytestmark = pytest.mark.browser

SCREENSHOTS = REPO / "test-results"
ACCOUNT = "reception"
ACCOUNT_PASSWORD = "reception-password-1"
DEVICE_NAME = "reception-pc"
# Enough small files that the copy usually spans a few of the agent's progress reports.
FOLDERS, FILES_PER_FOLDER, FILE_BYTES = 20, 100, 8192


# After SEED_WORLD: a backup account; its device registers itself (the agent knows the password).
SEED_FLEET = """
from devices import services
from tenants.audit import SYSTEM

account = services.account_create(
    actor=SYSTEM,
    tenant=Tenant.objects.get(slug="acme"),
    username=arguments["username"],
    password=arguments["account_password"],
    display_name="Reception office",
    max_devices=3,
)
print(json.dumps({"account_id": account.pk}))
"""


@pytest.fixture
def fleet_portal(tmp_path: Path, password: str) -> Iterator[LivePortal]:
    arguments = {"password": password, "username": ACCOUNT, "account_password": ACCOUNT_PASSWORD}
    with live_portal(tmp_path / "portal", seed=SEED_WORLD + SEED_FLEET, seed_arguments=arguments) as portal:
        yield portal


@pytest.fixture
def documents(tmp_path: Path) -> Path:
    folder = tmp_path / "documents"
    for number in range(FOLDERS):
        subfolder = folder / f"folder-{number:02d}"
        subfolder.mkdir(parents=True)
        for file_number in range(FILES_PER_FOLDER):
            (subfolder / f"file-{file_number:03d}.bin").write_bytes(os.urandom(FILE_BYTES))
    return folder


@pytest.fixture
def agent(fleet_portal: LivePortal, documents: Path, tmp_path: Path) -> Iterator[subprocess.Popen]:
    """The real reference agent: it registers with the account's password, connects and reports."""
    log = open(tmp_path / "agent.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devices.agent",
            "--server",
            fleet_portal.url,
            "--tenant",
            "acme",
            "--username",
            ACCOUNT,
            "--password-env",
            "AGENT_PASSWORD",
            "--state-dir",
            str(tmp_path / "agent-state"),
            "--name",
            DEVICE_NAME,
            "--protect",
            str(documents),
            "--vault-dir",
            str(tmp_path / "vault"),
            "--quiet",
        ],
        cwd=REPO,
        env={**fleet_portal.env, "AGENT_PASSWORD": ACCOUNT_PASSWORD},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _open_until(page, url: str, selector: str, agent: subprocess.Popen, what: str, timeout: float = 30) -> None:
    """Open `url` again until `selector` is on it: state the agent reports in the background."""
    deadline = time.monotonic() + timeout
    while True:
        page.goto(url)
        if page.locator(selector).count():
            return
        assert agent.poll() is None, f"the agent exited with {agent.returncode} before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_it_runs_a_backup_from_the_device_page_and_shows_it_live(fleet_portal, password, agent, browser):
    context = browser.new_context()
    page = context.new_page()
    page.goto(fleet_portal.url + "/login/")
    page.fill("input[name=username]", "acme-owner")
    page.fill("input[name=password]", password)
    page.click("main button[type=submit]")
    page.wait_for_url(fleet_portal.url + "/t/acme/")

    _open_until(
        page, fleet_portal.url + "/t/acme/devices/", "table[data-testid=devices] .dot.live", agent, "a live device"
    )
    page.click(f"text={DEVICE_NAME}")
    page.wait_for_selector("[data-testid=device-title]")
    device_url = page.url
    _open_until(page, device_url, "[data-testid=run-backup] button:not([disabled])", agent, "its protected items")
    page.wait_for_selector("body[data-live-fleet=connected]", timeout=10_000)
    assert page.locator("#device-jobs tr[data-job]").count() == 0

    # Everything below happens on this one page load: a reload would lose these.
    page.evaluate(
        """() => {
          window.notReloaded = true;
          window.jobEvents = [];
          document.addEventListener("fleet:event", (event) => {
            if (event.detail.kind === "job") window.jobEvents.push(event.detail);
          });
        }"""
    )
    page.click("[data-testid=run-backup] button")
    page.wait_for_selector("#command-messages >> text=was sent to", timeout=10_000)

    row = page.wait_for_selector("#device-jobs tr[data-job][data-status=succeeded]", timeout=60_000)
    assert page.evaluate("window.notReloaded") is True
    events = page.evaluate("window.jobEvents")
    assert events[0]["status"] == "running" and events[-1]["status"] == "succeeded", events
    assert [event["percent"] for event in events] == sorted(event["percent"] for event in events)
    files = FOLDERS * FILES_PER_FOLDER
    assert events[-1]["files_done"] == files
    assert row.query_selector("[data-field=status]").inner_text() == "Succeeded"
    assert row.query_selector("[data-field=percent]").inner_text() == "100.0 %"
    assert row.query_selector("[data-field=files]").inner_text() == f"{files} / {files}"
    assert row.query_selector("progress").evaluate("bar => bar.value") == 100

    # The command that started the job ends too, and the job's log opens in place.
    page.wait_for_selector("#device-commands tr[data-command][data-status=succeeded] >> text=Run backup")
    # The jobs table may be re-rendered by a late live update while the log opens: open it again then.
    for attempt in range(3):
        page.click("#device-jobs tr.log-row summary")
        try:
            page.wait_for_selector("#device-jobs [data-testid=job-log] >> text=Backed up", timeout=5_000)
            break
        except Exception:
            if attempt == 2:
                raise
    assert page.evaluate("window.notReloaded") is True

    # Dropping the connection turns the device's dots grey, and green again when the agent reconnects.
    page.evaluate(
        """() => {
          window.presence = [];
          window.dotStates = [];
          document.addEventListener("fleet:event", (event) => {
            if (event.detail.kind === "device_presence") window.presence.push(event.detail.live);
          });
          const dot = document.querySelector("[data-testid=device-title] .dot");
          new MutationObserver(() => window.dotStates.push(dot.dataset.live)).observe(dot, { attributes: true });
        }"""
    )
    page.click("button[data-command-kind=drop_connection]")
    # The agent reconnects within about a second. If its new connection lands before the old one's
    # goodbye is handled, the device never counts as offline (the newer connection owns it), so
    # only the reconnect is certain.
    page.wait_for_function("window.presence.at(-1) === true", timeout=30_000)
    if False in page.evaluate("window.presence"):
        assert "off" in page.evaluate("window.dotStates")
    assert page.locator(".dot[data-device][data-live=on].live").count() == 2  # the title's and the inventory's
    assert page.evaluate("window.notReloaded") is True

    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "device-run-backup.png"), full_page=True)
    context.close()
