"""Shared pieces of the GDPR tests: an account with data in every table, and a recipient that talks
to a real HTTP endpoint on 127.0.0.1 which can be taken down and brought back."""

from __future__ import annotations

import json
import threading
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from django.utils import timezone

from devices import keys
from devices import services as device_services
from devices.models import BackupAccount, Device
from tenants import personal_data
from tenants.audit import Actor

PASSWORD = "pw-erasure-12345"


@dataclass
class Seeded:
    account: BackupAccount
    devices: list[Device]
    identifiers: list[str]


def seed_account(tenant, owner, *, username: str = "alice.erasable", devices: int = 2, ip_base: int = 10) -> Seeded:
    """Create an account with devices, inventory, vaults, commands, jobs, log lines and audit events."""
    # Each tenant's admins act from an address of their own: a shared one is a residue of both.
    actor = Actor(user=owner, role="owner", ip_address=f"203.0.113.{tenant.pk}", user_agent="test-browser")
    account = device_services.account_create(
        actor=actor,
        tenant=tenant,
        username=username,
        password=PASSWORD,
        email=f"{username}@mail.example",
        display_name=f"Display {username}",
    )
    device_services.account_update(
        actor=actor,
        account=account,
        display_name=f"Display {username}",
        email=f"{username}@mail.example",
        max_devices=20,
        max_protected_bytes=0,
    )
    l_key = keys.derive_keys(tenant.slug, username, PASSWORD)[0].hex()
    made, identifiers = [], [username, f"{username}@mail.example", f"Display {username}"]
    for number in range(devices):
        device_id = f"{username}-dev-{number:04d}"
        name, address = f"{username} laptop {number}", f"198.51.100.{ip_base + number}"
        device = device_services.device_register(
            tenant_slug=tenant.slug,
            username=username,
            l_key_hex=l_key,
            device_id=device_id,
            inventory={"name": name, "os": "linux", "timezone": "Europe/Oslo"},
            ip_address=address,
        ).device
        identifiers += [device_id, name, address]
        device_services.inventory_apply(
            device_pk=device.pk,
            tenant_id=tenant.pk,
            status={
                "protected_items": [
                    {"item_id": f"item-{number}", "name": f"/home/{username}", "engine": "files", "size_bytes": 5}
                ],
                "vaults": [{"vault_id": "vault-1", "name": f"{username} vault", "kind": "local", "bytes_used": 9}],
            },
        )
        command = device_services.command_issue(actor=actor, device=device, kind="ping")
        job_id = str(uuid.uuid4())
        device_services.job_started(
            device_pk=device.pk,
            tenant_id=tenant.pk,
            message={"job_id": job_id, "command_id": str(command.command_id), "protected_item_id": f"item-{number}"},
        )
        device_services.job_finished(
            device_pk=device.pk,
            tenant_id=tenant.pk,
            message={
                "job_id": job_id,
                "status": "succeeded",
                "log_lines": [{"level": "info", "message": f"Backed up /home/{username}/notes.txt"}],
            },
        )
        made.append(device)
    Device.objects.filter(account=account).update(is_live=True, last_seen_at=timezone.now())
    return Seeded(account=account, devices=made, identifiers=identifiers)


@dataclass
class FakeLicensing:
    """A tiny licensing endpoint: erases by reference once, answers a receipt, can be down (503)."""

    up: bool = True
    calls: int = 0
    erased: dict[str, dict[str, Any]] = field(default_factory=dict)
    usernames: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    # Set in another process (a Celery worker) that calls a server this process does not run.
    url_override: str = ""

    @property
    def url(self) -> str:
        if self.url_override:
            return self.url_override
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/erasures"

    def start(self) -> FakeLicensing:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                fake.calls += 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not fake.up:
                    self.send_response(503)
                    self.end_headers()
                    return
                reference = body["reference"]
                if reference not in fake.erased:  # a repeated reference is the same erasure
                    fake.usernames.append(body["username"])
                    fake.erased[reference] = {
                        "receipt_id": f"lic-{len(fake.erased) + 1}",
                        "reference": reference,
                        "erased_at": timezone.now().isoformat(),
                        "counts": {"usage_rows": 3},
                    }
                payload = json.dumps(fake.erased[reference]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def propagate(self, subject: personal_data.Subject, reference: str) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url,
            data=json.dumps(
                {"username": subject.username, "subject_kind": subject.kind, "reference": reference}
            ).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - our own test server
            return json.loads(response.read())

    def register(self) -> None:
        personal_data.recipient_register(personal_data.Recipient(name="licensing-test", propagate=self.propagate))
