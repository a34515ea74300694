"""GDPR erasure of a backup account: states, grace period, execution as resumable steps, propagation
to a recipient with retries, suppression of re-registration, and the residue scan."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from devices import services as device_services
from devices.models import BackupAccount, Command, Device, Job, JobLogLine, ProtectedItem, StorageVault
from tenants import services_erasure as erasure
from tenants.audit import SYSTEM, Actor
from tenants.audit_chain import chain_verify
from tenants.models import AuditEvent
from tenants.models_erasure import ErasureRecipientStatus, ErasureRequest, ErasureStepRun, ErasureSuppression
from tenants.residue import residue_scan
from tests.tenants.erasure_helpers import seed_account

State = ErasureRequest.State


def owner_actor(cast) -> Actor:
    return Actor(user=cast.owner, role="owner", ip_address="203.0.113.7")


def open_request(cast, account) -> ErasureRequest:
    return erasure.erasure_request_create(
        actor=owner_actor(cast),
        tenant=cast.tenant,
        subject_kind="backup_account",
        subject_id=account.pk,
        asked_by=f"{account.username} by e-mail",
        verification="Replied from the address on file",
    )


def confirm_uninstalls(account_tombstone: str) -> int:
    """Play the live devices: each acknowledges and completes its uninstall command."""
    done = 0
    for command in Command.objects.filter(kind="uninstall", parameters__erasure=account_tombstone):
        device_services.command_advance(
            device_pk=command.device_id, command_id=str(command.command_id), status="succeeded"
        )
        done += 1
    return done


def run_to_completion(request: ErasureRequest, time_machine, capture) -> ErasureRequest:
    """Let the grace period pass and the sweeper start the request; confirm uninstalls; sweep on."""
    request.refresh_from_db()
    time_machine.move_to(request.grace_until + timedelta(seconds=1))
    with capture(execute=True):
        erasure.privacy_sweep()
    request.refresh_from_db()
    assert request.state not in (State.SCHEDULED, State.FAILED), request.last_error
    confirm_uninstalls(request.tombstone)
    time_machine.shift(timedelta(seconds=30))
    with capture(execute=True):
        erasure.privacy_sweep()
    request.refresh_from_db()
    return request


@pytest.mark.django_db
def test_it_erases_an_account_everywhere_and_the_residue_scan_then_finds_nothing(
    acme, globex, eager, licensing, time_machine, django_capture_on_commit_callbacks
):
    seeded = seed_account(acme.tenant, acme.owner)
    other = seed_account(globex.tenant, globex.owner, username="bob.keeps", ip_base=50)
    assert residue_scan(identifiers=seeded.identifiers).hits, "the scan must see the data before erasure"
    request = open_request(acme, seeded.account)
    assert request.due_at.month == (request.received_at.month % 12) + 1
    erasure.erasure_schedule(actor=owner_actor(acme), request=request)
    request.refresh_from_db()
    assert request.state == State.SCHEDULED and BackupAccount.objects.get(pk=seeded.account.pk).erasure_pending

    request = run_to_completion(request, time_machine, django_capture_on_commit_callbacks)

    assert request.state == State.COMPLETED, (request.state, request.last_error, request.residue)
    account_id = seeded.account.pk
    assert not BackupAccount.objects.filter(pk=account_id).exists()
    for model in (Device, Job, JobLogLine, Command, ProtectedItem, StorageVault):
        assert not model.objects.filter(tenant_id=acme.tenant.pk).exists() if model is not JobLogLine else True
    assert not JobLogLine.objects.filter(job__tenant=acme.tenant).exists()
    # Every live device was told to uninstall, once, before its rows went.
    steps = {step.name: step for step in request.steps.all()}
    assert steps["devices.uninstall"].counts == {"uninstall_commands": 2}
    assert steps["devices.await_uninstall"].counts == {"confirmed": 2}
    assert steps["devices.jobs"].counts == {"jobs": 2} and steps["devices.devices"].counts == {"devices": 2}
    assert all(step.state == ErasureStepRun.State.DONE for step in steps.values())
    # The recipient confirmed with a receipt, for the username, once.
    status = ErasureRecipientStatus.objects.get(request=request)
    assert status.state == "confirmed" and status.receipt["receipt_id"] == "lic-1"
    assert licensing.usernames == ["alice.erasable"]
    # Nothing about the account is left anywhere; the other tenant's account is untouched.
    report = residue_scan(identifiers=seeded.identifiers)
    assert report.clean, report.hits
    assert report.tables > 20 and report.columns > 100
    assert Device.objects.filter(account=other.account).count() == 2
    assert not residue_scan(identifiers=other.identifiers).clean
    # The request itself keeps no name: only the tombstone.
    assert request.identifiers == {} and request.subject_label == ""
    assert "alice" not in request.asked_by and request.tombstone in request.asked_by
    # Audit events about the account keep the action, lose the personal fields, and the chain verifies.
    created = AuditEvent.objects.get(tenant=acme.tenant, action="account.created")
    assert created.after == {"erased": request.tombstone} and created.personal_erased_at is not None
    registered = AuditEvent.objects.filter(tenant=acme.tenant, action="device.registered").first()
    assert registered.actor_label == f"erased:{request.tombstone}" and registered.ip_address is None
    assert chain_verify(f"tenant:{acme.tenant.pk}").intact
    actions = list(
        AuditEvent.objects.filter(tenant=acme.tenant, action__startswith="erasure.")
        .order_by("sequence")
        .values_list("action", flat=True)
    )
    assert actions[:4] == ["erasure.received", "erasure.scheduled", "erasure.started", "erasure.step_completed"]
    assert actions[-2:] == ["erasure.recipient_confirmed", "erasure.completed"]
    # Re-registration under the same name is refused for the suppression period; only a hash is kept.
    suppression = ErasureSuppression.objects.get(tenant=acme.tenant)
    assert "alice" not in suppression.key_hash and len(suppression.key_hash) == 64
    with pytest.raises(ValidationError, match="erased"):
        device_services.account_create(actor=SYSTEM, tenant=acme.tenant, username="Alice.Erasable", password="x" * 12)
    device_services.account_create(actor=SYSTEM, tenant=globex.tenant, username="alice.erasable", password="x" * 12)
    time_machine.shift(timedelta(days=366))
    device_services.account_create(actor=SYSTEM, tenant=acme.tenant, username="alice.erasable", password="x" * 12)


@pytest.mark.django_db
def test_it_cancels_during_the_grace_period_and_leaves_the_data_intact(
    acme, eager, licensing, time_machine, django_capture_on_commit_callbacks
):
    seeded = seed_account(acme.tenant, acme.owner)
    request = open_request(acme, seeded.account)
    erasure.erasure_schedule(actor=owner_actor(acme), request=request)
    # During the grace period the account is hidden and takes no new devices or commands.
    from devices import selectors

    assert not selectors.account_list(tenant=acme.tenant).filter(pk=seeded.account.pk).exists()
    assert not selectors.device_list(tenant=acme.tenant).exists()
    with pytest.raises(ValidationError, match="being erased"):
        device_services.command_issue(actor=owner_actor(acme), device=seeded.devices[0], kind="ping")
    with pytest.raises(ValidationError):
        open_request(acme, seeded.account)  # one open request per subject
    erasure.erasure_cancel(actor=owner_actor(acme), request=request)
    request.refresh_from_db()
    assert request.state == State.CANCELLED
    account = BackupAccount.objects.get(pk=seeded.account.pk)
    assert not account.erasure_pending and account.devices.count() == 2
    assert Job.objects.filter(device__account=account).count() == 2
    # The sweeper never starts a cancelled request.
    time_machine.move_to(request.grace_until + timedelta(days=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert erasure.privacy_sweep()["started"] == 0
    assert BackupAccount.objects.filter(pk=account.pk).exists() and licensing.calls == 0
    with pytest.raises(ValidationError):
        erasure.erasure_schedule(actor=owner_actor(acme), request=request)
    # A new request can be opened again after a cancellation.
    assert open_request(acme, account).state == State.RECEIVED


@pytest.mark.django_db
def test_it_tracks_due_dates_extensions_refusals_and_legal_holds(acme, time_machine):
    time_machine.move_to("2026-01-31T10:00:00Z")
    seeded = seed_account(acme.tenant, acme.owner, devices=0)
    request = open_request(acme, seeded.account)
    assert request.due_at.isoformat().startswith("2026-02-28")  # one month, clamped to February's end
    with pytest.raises(ValidationError, match="reason"):
        erasure.erasure_extend(actor=owner_actor(acme), request=request, months=2, reason=" ")
    with pytest.raises(ValidationError):
        erasure.erasure_extend(actor=owner_actor(acme), request=request, months=3, reason="Complex")
    erasure.erasure_extend(actor=owner_actor(acme), request=request, months=2, reason="Many systems involved")
    request.refresh_from_db()
    assert request.due_at.isoformat().startswith("2026-04-30") and request.extension_reason
    with pytest.raises(ValidationError):
        erasure.erasure_extend(actor=owner_actor(acme), request=request, months=1, reason="Again")
    # A legal hold needs a reason and an end; it freezes the request until released or ended.
    with pytest.raises(ValidationError):
        erasure.erasure_hold(actor=owner_actor(acme), request=request, reason="", until=timezone.now())
    erasure.erasure_hold(
        actor=owner_actor(acme), request=request, reason="Litigation", until=timezone.now() + timedelta(days=10)
    )
    request.refresh_from_db()
    assert request.state == State.ON_HOLD and BackupAccount.objects.get(pk=seeded.account.pk).erasure_pending
    time_machine.shift(timedelta(days=11))
    assert erasure.privacy_sweep()["released"] == 1
    request.refresh_from_db()
    assert request.state == State.SCHEDULED
    with pytest.raises(ValidationError, match="reason"):
        erasure.erasure_refuse(actor=owner_actor(acme), request=request, reason="")
    erasure.erasure_refuse(actor=owner_actor(acme), request=request, reason="Manifestly unfounded")
    request.refresh_from_db()
    assert request.state == State.REFUSED and not BackupAccount.objects.get(pk=seeded.account.pk).erasure_pending
    actions = set(AuditEvent.objects.filter(action__startswith="erasure.").values_list("action", flat=True))
    assert {"erasure.received", "erasure.extended", "erasure.held", "erasure.released", "erasure.refused"} <= actions


@pytest.mark.django_db
def test_it_stays_partial_until_a_recipient_that_was_down_confirms(
    acme, eager, licensing, time_machine, django_capture_on_commit_callbacks
):
    seeded = seed_account(acme.tenant, acme.owner, devices=1)
    request = open_request(acme, seeded.account)
    erasure.erasure_schedule(actor=owner_actor(acme), request=request)
    licensing.up = False
    request = run_to_completion(request, time_machine, django_capture_on_commit_callbacks)
    assert request.state == State.PARTIAL
    status = ErasureRecipientStatus.objects.get(request=request)
    assert status.attempts == 1 and status.state == "pending" and "503" in status.last_error
    assert "alice" not in status.last_error
    first_retry = status.next_attempt_at
    # Not due yet: the sweeper leaves it alone; a second failure doubles the wait.
    with django_capture_on_commit_callbacks(execute=True):
        assert erasure.privacy_sweep()["recipients"] == 0
    time_machine.move_to(first_retry + timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        erasure.privacy_sweep()
    status.refresh_from_db()
    assert status.attempts == 2 and status.next_attempt_at - timezone.now() > timedelta(seconds=55)
    licensing.up = True
    time_machine.move_to(status.next_attempt_at + timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        erasure.privacy_sweep()
    request.refresh_from_db()
    status.refresh_from_db()
    assert status.state == "confirmed" and status.attempts == 3
    assert request.state == State.COMPLETED
    assert licensing.calls == 3 and len(licensing.erased) == 1


def _new_scheduled_request(cast, username: str, ip_base: int) -> tuple[ErasureRequest, list[str]]:
    seeded = seed_account(cast.tenant, cast.owner, username=username, devices=2, ip_base=ip_base)
    request = open_request(cast, seeded.account)
    erasure.erasure_schedule(actor=owner_actor(cast), request=request)
    return ErasureRequest.objects.get(pk=request.pk), seeded.identifiers


@pytest.mark.django_db
def test_it_resumes_after_the_worker_dies_after_any_step_and_no_step_runs_twice(
    acme, eager, licensing, time_machine, django_capture_on_commit_callbacks
):
    """A worker killed after step k loses its message (Celery with acks on a killed worker): the
    request stays in_progress until the sweeper finds it stalled and enqueues it again."""
    probe, _ = _new_scheduled_request(acme, "probe.steps", 200)
    time_machine.move_to(probe.grace_until + timedelta(seconds=1))
    erasure.erasure_start(request_id=probe.pk)  # lays out the steps without running them
    step_count = ErasureStepRun.objects.filter(request=probe).count()
    assert step_count >= 12
    ErasureRequest.objects.filter(pk=probe.pk).update(state=State.CANCELLED)
    for interrupt_after in range(step_count + 1):
        username = f"kill{interrupt_after}.user"
        request, identifiers = _new_scheduled_request(acme, username, 10 + interrupt_after * 2)
        time_machine.move_to(request.grace_until + timedelta(seconds=1))
        erasure.erasure_start(request_id=request.pk)  # on_commit not run: the execute message is lost
        for _ in range(interrupt_after):
            outcome = erasure.erasure_advance(request_id=request.pk)
            if outcome == "waiting":  # the devices are asked to uninstall; they answer
                confirm_uninstalls(request.tombstone)
                outcome = erasure.erasure_advance(request_id=request.pk)
            assert outcome in ("ran", "propagating"), outcome
        # ...and here the worker died. Nothing moves until the request counts as stalled.
        done_before = ErasureStepRun.objects.filter(request=request, state="done").count()
        with django_capture_on_commit_callbacks(execute=True):
            erasure.privacy_sweep()
        request.refresh_from_db()
        assert ErasureStepRun.objects.filter(request=request, state="done").count() == done_before
        time_machine.shift(erasure.STALL_AFTER + timedelta(seconds=1))
        with django_capture_on_commit_callbacks(execute=True):
            erasure.privacy_sweep()
        confirm_uninstalls(request.tombstone)
        time_machine.shift(timedelta(seconds=20))
        with django_capture_on_commit_callbacks(execute=True):
            erasure.privacy_sweep()
        request.refresh_from_db()
        assert request.state == State.COMPLETED, (interrupt_after, request.state, request.last_error)
        assert residue_scan(identifiers=identifiers).clean
        # Each step completed exactly once, with one uninstall per device and one recipient erasure.
        steps = ErasureStepRun.objects.filter(request=request)
        assert all(step.state == "done" for step in steps)
        completions = AuditEvent.objects.filter(action="erasure.step_completed", after__tombstone=request.tombstone)
        assert completions.count() == step_count
        assert steps.get(name="devices.uninstall").counts == {"uninstall_commands": 2}
        assert licensing.usernames.count(username) == 1
    assert chain_verify(f"tenant:{acme.tenant.pk}").intact


@pytest.mark.django_db
def test_it_rolls_back_a_step_that_fails_halfway_and_retries_it(acme, eager, licensing, time_machine):
    request, _ = _new_scheduled_request(acme, "flaky.user", 90)
    time_machine.move_to(request.grace_until + timedelta(seconds=1))
    erasure.erasure_start(request_id=request.pk)
    while ErasureStepRun.objects.get(request=request, name="devices.await_uninstall").state != "done":
        erasure.erasure_advance(request_id=request.pk)
        confirm_uninstalls(request.tombstone)
    # A database failure in the middle of the devices step: a device row the step cannot delete.
    from django.db import connection

    device = Device.objects.filter(account__username="flaky.user").first()
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TRIGGER refuse_delete BEFORE DELETE ON devices_device BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            if connection.vendor == "sqlite"
            else "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
            " LANGUAGE plpgsql; CREATE TRIGGER refuse_delete BEFORE DELETE ON devices_device"
            " FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    outcomes = [erasure.erasure_advance(request_id=request.pk) for _ in range(8)]
    assert "error" in outcomes
    step = ErasureStepRun.objects.get(request=request, name="devices.devices")
    assert step.attempts == 1 and step.state == "pending" and "disk full" in step.last_error
    assert Device.objects.filter(pk=device.pk).exists()
    request.refresh_from_db()
    assert request.wake_at is not None and request.state == State.IN_PROGRESS
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER refuse_delete" + ("" if connection.vendor == "sqlite" else " ON devices_device"))
    time_machine.move_to(request.wake_at + timedelta(seconds=1))
    for _ in range(10):
        erasure.erasure_advance(request_id=request.pk)
    assert not Device.objects.filter(pk=device.pk).exists()
    assert ErasureStepRun.objects.get(request=request, name="devices.devices").state == "done"


@pytest.mark.django_db
def test_it_erases_a_team_members_personal_data_keeping_their_actions_under_a_tombstone(
    acme, globex, eager, licensing, as_user, time_machine, django_capture_on_commit_callbacks
):
    from django.contrib.auth import get_user_model

    from tenants import services
    from tenants.models import ApiKey, Membership
    from tests.conftest import make_user

    leaver = make_user("frank.leaver")
    leaver.first_name, leaver.last_name = "Franklin", "Leaverson"
    leaver.save()
    Membership.objects.create(tenant=acme.tenant, user=leaver, role="admin")
    actor = Actor(user=leaver, role="admin", ip_address="192.0.2.77", user_agent="Franklin's browser")
    services.api_key_create(actor=actor, tenant=acme.tenant, user=leaver, name="frank's laptop key")
    seed_account(acme.tenant, leaver, username="kept.account", devices=0)
    # A person in another tenant too cannot be erased by one tenant alone.
    Membership.objects.create(tenant=globex.tenant, user=acme.technician, role="admin")
    with pytest.raises(ValidationError):
        erasure.erasure_request_create(
            actor=owner_actor(acme), tenant=acme.tenant, subject_kind="admin", subject_id=acme.technician.pk,
            asked_by="x", verification="y",
        )  # fmt: skip
    request = erasure.erasure_request_create(
        actor=owner_actor(acme),
        tenant=acme.tenant,
        subject_kind="admin",
        subject_id=leaver.pk,
        asked_by="Franklin, leaving the team",
        verification="In person",
    )
    identifiers = ["frank.leaver", "frank.leaver@example.com", "Franklin", "Leaverson", "192.0.2.77"]
    erasure.erasure_schedule(actor=owner_actor(acme), request=request)
    request = run_to_completion(request, time_machine, django_capture_on_commit_callbacks)
    assert request.state == State.COMPLETED, (request.state, request.residue, request.last_error)
    assert residue_scan(identifiers=identifiers).clean
    user = get_user_model().objects.get(pk=leaver.pk)
    assert user.username == request.tombstone and not user.is_active and not user.has_usable_password()
    assert not Membership.objects.filter(user=user).exists() and not ApiKey.objects.filter(user=user).exists()
    # Their actions stay in the audit log, under the tombstone; the account they created is kept.
    created = AuditEvent.objects.get(tenant=acme.tenant, action="account.created")
    assert created.actor_id == leaver.pk and created.actor_label == f"erased:{request.tombstone}"
    assert created.ip_address is None and created.user_agent == ""
    assert created.after["username"] == "kept.account"  # the values were about someone else
    assert BackupAccount.objects.filter(username="kept.account").exists()
    assert chain_verify(f"tenant:{acme.tenant.pk}").intact
    assert licensing.usernames == ["frank.leaver"]
    assert as_user(user).get("/t/acme/").status_code in (302, 404)


def _sweep_until_done(request, time_machine, capture, rounds: int = 12) -> ErasureRequest:
    for _ in range(rounds):
        confirm_uninstalls_all()
        time_machine.shift(timedelta(seconds=31))
        with capture(execute=True):
            erasure.privacy_sweep()
        request.refresh_from_db()
        if request.state in (State.COMPLETED, State.FAILED):
            break
    return request


def confirm_uninstalls_all() -> None:
    for command in Command.objects.filter(kind="uninstall").exclude(status__in=Command.FINISHED):
        device_services.command_advance(
            device_pk=command.device_id, command_id=str(command.command_id), status="succeeded"
        )


@pytest.mark.django_db
def test_it_offboards_a_whole_tenant_once_its_owner_confirms(
    acme, globex, staff, eager, licensing, as_user, time_machine, django_capture_on_commit_callbacks
):
    first = seed_account(acme.tenant, acme.owner, username="off.one", devices=2, ip_base=120)
    second = seed_account(acme.tenant, acme.owner, username="off.two", devices=1, ip_base=130)
    kept = seed_account(globex.tenant, globex.owner, username="globex.stays", devices=1, ip_base=140)
    response = as_user(staff).post(f"/platform/tenants/{acme.tenant.pk}/offboard/", {"reason": "Contract ended"})
    assert response.status_code == 302
    request = ErasureRequest.objects.get(tenant=acme.tenant, subject_kind="tenant")
    assert request.state == State.RECEIVED and request.requested_by == staff
    # Platform staff cannot confirm it, nor an admin: the tenant's owner does.
    with pytest.raises(ValidationError, match="owner"):
        erasure.erasure_schedule(actor=Actor(user=acme.admin, role="admin"), request=request)
    as_user(acme.owner).post(f"/t/acme/privacy/erasures/{request.pk}/act/", {"action": "schedule"})
    request.refresh_from_db()
    assert request.state == State.SCHEDULED
    time_machine.move_to(request.grace_until + timedelta(seconds=1))
    request = _sweep_until_done(request, time_machine, django_capture_on_commit_callbacks)
    debug = [(c.subject_kind, c.state, c.last_error, c.residue) for c in ErasureRequest.objects.filter(parent=request)]
    debug += list(request.steps.values_list("name", "state", "last_error"))
    assert request.state == State.COMPLETED, (request.state, request.last_error, request.residue, debug)
    children = ErasureRequest.objects.filter(parent=request)
    assert children.filter(subject_kind="backup_account").count() == 2
    assert children.filter(subject_kind="admin").count() == 4  # owner, admin, technician, auditor
    assert all(child.state == State.COMPLETED for child in children)
    assert sorted(licensing.usernames) == sorted(
        ["off.one", "off.two", "acme-owner", "acme-admin", "acme-technician", "acme-auditor"]
    )
    people = ["acme-owner", "acme-admin", "acme-technician", "acme-auditor", "Acme Corporation"]
    assert residue_scan(identifiers=first.identifiers + second.identifiers + people).clean
    acme.tenant.refresh_from_db()
    assert acme.tenant.name == request.tombstone and acme.tenant.is_suspended
    assert (
        not AuditEvent.objects.filter(tenant=acme.tenant, personal_erased_at__isnull=True)
        .exclude(action__startswith="erasure.")
        .exists()
    )
    assert chain_verify(f"tenant:{acme.tenant.pk}").intact and chain_verify("platform").intact
    # The other tenant is untouched.
    assert Device.objects.filter(account=kept.account).count() == 1
    assert not residue_scan(identifiers=kept.identifiers).clean


@pytest.mark.django_db
def test_it_offboards_a_tenant_suspended_for_a_month_without_its_owner(
    acme, staff, eager, without_licensing_recipient, time_machine, django_capture_on_commit_callbacks
):
    from tenants import services

    time_machine.move_to(timezone.now())
    seed_account(acme.tenant, acme.owner, username="late.off", devices=1, ip_base=150)
    services.tenant_suspend(actor=Actor(user=staff, role="platform_staff"), tenant=acme.tenant)
    request = erasure.tenant_offboarding_request(
        actor=Actor(user=staff, role="platform_staff"), tenant=acme.tenant, reason="Unpaid, suspended"
    )
    time_machine.shift(timedelta(days=29))
    with django_capture_on_commit_callbacks(execute=True):
        erasure.privacy_sweep()
    request.refresh_from_db()
    assert request.state == State.RECEIVED
    time_machine.shift(timedelta(days=2))
    with django_capture_on_commit_callbacks(execute=True):
        erasure.privacy_sweep()
    request.refresh_from_db()
    assert request.state == State.SCHEDULED
    time_machine.move_to(request.grace_until + timedelta(seconds=1))
    request = _sweep_until_done(request, time_machine, django_capture_on_commit_callbacks)
    assert request.state == State.COMPLETED, (request.state, request.last_error, request.residue)
    assert not BackupAccount.objects.filter(tenant=acme.tenant).exists()
