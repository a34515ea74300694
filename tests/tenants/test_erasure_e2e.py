"""The erasure workflow end to end on PostgreSQL and Redis: a real portal (uvicorn) in the embedded
"both" role, which is also the licensing service its usage reports and erasures go to over HTTP; a
real Celery worker; the reference agent connected live. The portal reports usage naming the account
to the service; request, grace period, cancel (data intact), request again, execute; the agent
receives the uninstall and forgets the account, the service pseudonymises the account and confirms,
the residue scanner (the service's tables included) finds nothing, and the receipt lists what was
done and the service's receipt id."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.licensing.conftest import ServiceFront
from tests.live import REPO, LivePortal, live_portal, wait_for

PASSWORD = "e2e-erasure-password"

SEED = """
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.auth import SESSION_KEY, BACKEND_SESSION_KEY, HASH_SESSION_KEY
from devices import services as device_services
from tenants.audit import SYSTEM
from tenants.models import Membership, Tenant

tenant = Tenant.objects.create(slug="acme", name="Acme")
owner = get_user_model().objects.create_user("acme-owner", "owner@acme.example", "owner-password-1")
Membership.objects.create(tenant=tenant, user=owner, role="owner")
account = device_services.account_create(
    actor=SYSTEM, tenant=tenant, username="gina.e2e", password=arguments["password"], email="gina@e2e.example"
)
session = SessionStore()
session[SESSION_KEY] = str(owner.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = owner.get_session_auth_hash()
session.create()
print(json.dumps({"session": session.session_key, "account": account.pk, "owner": owner.pk}))
"""

# Runs inside the portal: the admin's actions, as the pages would call them.
ACT = """
from django.contrib.auth import get_user_model
from tenants import services_erasure as erasure
from tenants.audit import Actor
from tenants.models import Tenant
from tenants.models_erasure import ErasureRequest, PrivacySettings

tenant = Tenant.objects.get(slug="acme")
actor = Actor(user=get_user_model().objects.get(pk=arguments["owner"]), role="owner")
if arguments["do"] == "request":
    PrivacySettings.objects.update_or_create(tenant=tenant, defaults={"grace_days": arguments["grace_days"]})
    request = erasure.erasure_request_create(
        actor=actor, tenant=tenant, subject_kind="backup_account", subject_id=arguments["account"],
        asked_by="Gina, by e-mail", verification="Replied from the address on file",
    )
    erasure.erasure_schedule(actor=actor, request=request)
    print(json.dumps(request.pk))
elif arguments["do"] == "cancel":
    erasure.erasure_cancel(actor=actor, request=ErasureRequest.objects.get(pk=arguments["request"]))
    print(json.dumps(True))
elif arguments["do"] == "sweep":
    erasure.privacy_sweep()
    request = ErasureRequest.objects.get(pk=arguments["request"])
    print(json.dumps({"state": request.state, "error": request.last_error, "residue": request.residue}))
elif arguments["do"] == "report":
    from datetime import date
    from licensing import services as licensing_services
    licensing_services.usage_report_create(period=date(2026, 11, 1))
    licensing_services.outbox_deliver_pending()
    print(json.dumps(True))
elif arguments["do"] == "facts":
    from devices.models import BackupAccount, Command, Device
    from licensing import payload
    from licensing.models import ErasureReceipt, ReceivedReport
    service_bodies = [payload.decompress(bytes(r.body), limit=10**7).decode() for r in ReceivedReport.objects.all()]
    print(json.dumps({
        "accounts": BackupAccount.objects.count(),
        "devices": list(Device.objects.values("device_id", "name", "is_live", "public_ip")),
        "uninstalls": list(Command.objects.filter(kind="uninstall").values_list("status", flat=True)),
        "service_reports": len(service_bodies),
        "service_mentions": sorted({v for v in arguments.get("look_for", []) for b in service_bodies if v in b}),
        "service_receipts": [
            {"receipt_id": str(r.receipt_id), "reference": r.reference, "counts": r.counts}
            for r in ErasureReceipt.objects.all()
        ],
    }))
elif arguments["do"] == "recipients":
    from tenants.models_erasure import ErasureRecipientStatus
    print(json.dumps(list(ErasureRecipientStatus.objects.filter(request_id=arguments["request"]).values(
        "name", "state", "attempts", "receipt"
    ))))
"""

# An ordinary Celery worker: the erasure's recipients are the ones the apps register.
WORKER = """
import os, sys
sys.path.insert(0, os.getcwd())
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
import django
django.setup()
from portal.celery import app
app.worker_main(["worker", "--pool=solo", "--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "info"])
"""


# The address the licensing service sees the portal at. On one machine everything comes from
# 127.0.0.1, the agent too, and the service would hold the device's address as the portal's: a
# value shared by two parties, which the residue scan rightly reports.
PORTAL_PUBLIC_IP = "192.0.2.10"


@dataclass
class SelfReportingPortal(LivePortal):
    """A live portal whose licensing client talks to its own licensing service ("both" role),
    across a front on 127.0.0.1 that stands for the network between them."""

    front: ServiceFront | None = None

    def __post_init__(self) -> None:
        self.front = ServiceFront(self.url, delay=0, forwarded_for=PORTAL_PUBLIC_IP)
        # The portal, its scripts and the worker all read this environment.
        self.env["LICENSING_SERVICE_URL"] = f"{self.front.url}/licensing/"
        self.env["TRUSTED_PROXIES"] = "127.0.0.1/32"

    def stop(self) -> None:
        super().stop()
        if self.front is not None:
            self.front.close()


@pytest.mark.postgres
@pytest.mark.redis
def test_it_erases_an_account_with_a_live_agent_end_to_end(tmp_path: Path):
    agent = worker = None
    try:
        with live_portal(
            tmp_path / "portal",
            seed=SEED,
            seed_arguments={"password": PASSWORD},
            use_postgres=True,
            portal_class=SelfReportingPortal,
        ) as portal:
            seeded = portal.seeded

            def act(**arguments):
                return portal.django(ACT, owner=seeded["owner"], account=seeded["account"], **arguments)

            worker = subprocess.Popen(
                [sys.executable, "-c", WORKER],
                cwd=REPO,
                env=portal.env,
                stdout=open(tmp_path / "worker.log", "w"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
            )
            documents = tmp_path / "agent" / "documents"
            documents.mkdir(parents=True)
            (documents / "notes.txt").write_text("gina's notes\n")
            agent = subprocess.Popen(
                [
                    sys.executable, "-m", "devices.agent", "--server", portal.url, "--tenant", "acme",
                    "--username", "gina.e2e", "--password-env", "AGENT_PASSWORD",
                    "--state-dir", str(tmp_path / "agent" / "state"), "--name", "gina-e2e-laptop",
                    "--protect", str(documents), "--vault-dir", str(tmp_path / "agent" / "vault"), "--quiet",
                ],
                cwd=REPO,
                env={**portal.env, "AGENT_PASSWORD": PASSWORD},
                stdout=subprocess.DEVNULL,
                stderr=open(tmp_path / "agent.log", "w"),  # noqa: SIM115
            )  # fmt: skip
            facts = wait_for(
                lambda: (f := act(do="facts"))["devices"] and f["devices"][0]["is_live"] and f,
                timeout=60,
                what="the agent to connect",
            )
            device = facts["devices"][0]
            identifiers = ["gina.e2e", "gina@e2e.example", device["device_id"], device["name"]]

            # The portal reports usage; the service now holds the account's username and device name.
            act(do="report")
            facts = wait_for(
                lambda: (f := act(do="facts", look_for=identifiers))["service_reports"] == 1 and f,
                timeout=30,
                what="the usage report to reach the service",
            )
            assert facts["service_mentions"] == sorted(["gina.e2e", device["name"]])

            def residue_scan():
                return subprocess.run(
                    [sys.executable, "manage.py", "residue_scan", *[f"--identifier={value}" for value in identifiers]],
                    cwd=REPO,
                    env=portal.env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )

            before = residue_scan()
            assert before.returncode != 0 and "licensing_receivedreport.body: 1 row(s)" in before.stdout

            # Request, grace period, cancel: nothing is touched, the agent stays connected.
            first = act(do="request", grace_days=7)
            act(do="cancel", request=first)
            assert act(do="sweep", request=first)["state"] == "cancelled"
            facts = act(do="facts")
            assert facts["accounts"] == 1 and facts["devices"][0]["is_live"] and facts["uninstalls"] == []
            assert agent.poll() is None

            # Request again, with no grace period: the worker executes it.
            second = act(do="request", grace_days=0)
            agent.wait(timeout=90)  # the agent received the uninstall, forgot the account and stopped
            assert agent.returncode == 0
            assert not (tmp_path / "agent" / "state" / "state.json").exists()

            def completed():
                status = act(do="sweep", request=second)
                return status["state"] in ("completed", "failed") and status

            status = wait_for(completed, timeout=120, what="the erasure to complete")
            assert status["state"] == "completed", status
            # It completed only once the service confirmed: its receipt is the recipient's.
            (recipient,) = act(do="recipients", request=second)
            facts = act(do="facts", look_for=identifiers)
            (service_receipt,) = facts["service_receipts"]
            assert recipient["name"] == "licensing" and recipient["state"] == "confirmed"
            assert recipient["receipt"]["receipt_id"] == service_receipt["receipt_id"]
            assert service_receipt["counts"] == {"reports": 1, "usernames": 2, "device_names": 1}
            assert {key: facts[key] for key in ("accounts", "devices", "uninstalls")} == {
                "accounts": 0,
                "devices": [],
                "uninstalls": [],
            }
            assert facts["service_reports"] == 1 and facts["service_mentions"] == []

            # The residue scanner, as an operator runs it, finds nothing, the service's reports included.
            scan = residue_scan()
            assert scan.returncode == 0, scan.stdout + scan.stderr
            assert "Nothing found" in scan.stdout

            # The receipt lists what was erased and where, and none of the erased data.
            request = urllib.request.Request(
                f"{portal.url}/t/acme/privacy/erasures/{second}/receipt/",
                headers={"Cookie": f"sessionid={seeded['session']}"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own server
                receipt = response.read().decode()
            assert "<td>licensing</td>" in receipt and service_receipt["receipt_id"] in receipt
            assert "uninstall_commands: 1" in receipt and "devices: 1" in receipt and "nothing found" in receipt
            for identifier in identifiers:
                assert identifier not in receipt
            assert "gina" not in json.dumps(recipient["receipt"])  # the service's receipt names only the reference
    finally:
        for process in (agent, worker):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=15)
