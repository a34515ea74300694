"""Demo data for the embedded set-up: one tenant and its owner, whose password is new on every start."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from django.contrib.auth import get_user_model
from django.db import transaction

from devices.models import BackupAccount, Device
from devices.services import account_create, account_reset_password, token_hash
from tenants.audit import Actor, audit_record
from tenants.models import Membership, Tenant
from tenants.roles import Role
from tenants.services import tenant_create

DEMO_TENANT_SLUG = "demo"
DEMO_TENANT_NAME = "Demo Reseller"
DEMO_OWNER_USERNAME = "demo-owner"
DEMO_OWNER_EMAIL = "owner@demo.invalid"
DEMO_ACTOR = Actor(label="demo set-up", role="system")


@dataclass(frozen=True)
class DemoLogin:
    tenant: Tenant
    username: str
    password: str
    # False when the owner existed already and only the password was replaced.
    owner_created: bool


def demo_password() -> str:
    """Return a fresh random password (about 100 bits): never a fixed one, even for a demo."""
    return "-".join(secrets.token_urlsafe(6) for _ in range(3))


@transaction.atomic
def demo_prepare() -> DemoLogin:
    """Create the demo tenant and its owner if missing, and give the owner a new random password."""
    tenant = Tenant.objects.filter(slug=DEMO_TENANT_SLUG).first()
    if tenant is None:
        tenant = tenant_create(actor=DEMO_ACTOR, slug=DEMO_TENANT_SLUG, name=DEMO_TENANT_NAME)

    password = demo_password()
    user_model = get_user_model()
    owner = user_model.objects.filter(username=DEMO_OWNER_USERNAME).first()
    owner_created = owner is None
    if owner is None:
        owner = user_model.objects.create_user(username=DEMO_OWNER_USERNAME, email=DEMO_OWNER_EMAIL, password=password)
    else:
        owner.set_password(password)
        owner.is_active = True
        owner.save(update_fields=["password", "is_active"])
        audit_record(
            actor=DEMO_ACTOR,
            tenant=tenant,
            action="account.password_reset",
            target=owner,
            after={"user": owner.get_username()},
        )
        _forget_failed_logins(owner.get_username())

    membership, membership_created = Membership.objects.get_or_create(
        tenant=tenant, user=owner, defaults={"role": Role.OWNER}
    )
    if membership_created or membership.role != Role.OWNER:
        before = None if membership_created else {"user": owner.get_username(), "role": membership.role}
        membership.role = Role.OWNER
        membership.save(update_fields=["role"])
        audit_record(
            actor=DEMO_ACTOR,
            tenant=tenant,
            action="team.member_added" if membership_created else "team.role_changed",
            target=membership,
            before=before,
            after={"user": owner.get_username(), "role": Role.OWNER.value},
        )
    return DemoLogin(tenant=tenant, username=owner.get_username(), password=password, owner_created=owner_created)


def _forget_failed_logins(username: str) -> None:
    """Lift a lockout left by earlier failed attempts, so that the new password works at once."""
    from axes.utils import reset

    reset(username=username)


DEMO_ACCOUNT_USERNAME = "demo-office"
DEMO_DEVICE_FILES = 40


@dataclass(frozen=True)
class DemoFleet:
    """A backup account and, per demo device, the folders its reference agent protects and fills."""

    username: str
    password: str
    device_roots: list[Path]


def demo_fleet_prepare(*, data_dir: Path, devices: int) -> DemoFleet:
    """Create the demo backup account and folders for `devices` reference agents to back up.

    The account's password is random, made once and kept in data_dir (mode 0600): the agents keep
    their device tokens across restarts, and need the same password only to register again.
    """
    fleet_dir = data_dir / "demo-fleet"
    fleet_dir.mkdir(parents=True, exist_ok=True)
    password_file = fleet_dir / "account-password"
    tenant = Tenant.objects.get(slug=DEMO_TENANT_SLUG)
    account = BackupAccount.objects.filter(tenant=tenant, username=DEMO_ACCOUNT_USERNAME).first()
    if account is None or not password_file.exists():
        password = demo_password()
        if account is None:
            account_create(
                actor=DEMO_ACTOR,
                tenant=tenant,
                username=DEMO_ACCOUNT_USERNAME,
                password=password,
                display_name="Demo office",
                email="office@demo.invalid",
                allow_admin_password_reset=True,
            )
        else:
            account_reset_password(actor=DEMO_ACTOR, account=account, password=password)
        descriptor = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(password)
    roots = []
    for number in range(1, devices + 1):
        root = fleet_dir / f"device-{number}"
        documents = root / "documents"
        if not documents.exists():
            documents.mkdir(parents=True)
            for index in range(DEMO_DEVICE_FILES):
                (documents / f"report-{index:03d}.txt").write_text(f"Demo device {number}, report {index}\n" * 400)
        roots.append(root)
    return DemoFleet(username=DEMO_ACCOUNT_USERNAME, password=password_file.read_text().strip(), device_roots=roots)


SIMULATED_ACCOUNT_USERNAME = "simulated-fleet"


def simulated_device_token(secret: str, index: int) -> str:
    """Return simulated device `index`'s token, derived as bench/simulator.py derives it."""
    digest = hmac.new(secret.encode(), f"device:{index}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def demo_simulated_fleet_prepare(*, data_dir: Path, devices: int) -> str:
    """Register `devices` simulated devices in the demo tenant; return the secret their tokens come from.

    bench/simulator.py then plays them over the real device protocol (`--simulated N`), so the demo
    shows a fleet of hundreds on the device pages. The secret is made once and kept in data_dir
    (mode 0600); devices are registered directly (one bulk insert), not through the L-key login,
    because registering 200 devices one bcrypt verification at a time would take minutes.
    """
    fleet_dir = data_dir / "demo-fleet"
    fleet_dir.mkdir(parents=True, exist_ok=True)
    secret_file = fleet_dir / "simulator-secret"
    if not secret_file.exists():
        descriptor = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    secret = secret_file.read_text().strip()
    tenant = Tenant.objects.get(slug=DEMO_TENANT_SLUG)
    account = BackupAccount.objects.filter(tenant=tenant, username=SIMULATED_ACCOUNT_USERNAME).first()
    if account is None:
        account = account_create(
            actor=DEMO_ACTOR,
            tenant=tenant,
            username=SIMULATED_ACCOUNT_USERNAME,
            password=demo_password(),
            display_name="Simulated fleet",
            email="fleet@demo.invalid",
        )
    existing = set(Device.objects.filter(account=account).values_list("device_id", flat=True))
    Device.objects.bulk_create(
        [
            Device(
                tenant=tenant,
                account=account,
                device_id=simulated_device_id(index),
                name=f"sim-{index:04d}",
                token_hash=token_hash(simulated_device_token(secret, index)),
            )
            for index in range(devices)
            if simulated_device_id(index) not in existing
        ],
        batch_size=1000,
    )
    return secret


def simulated_device_id(index: int) -> str:
    """The client-generated id bench/simulator.py gives device `index`."""
    return f"bench-{index:07d}"
