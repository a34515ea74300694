"""GDPR erasure: requests, their states, and their execution as resumable, idempotent steps.

A request moves received → scheduled (grace period: the subject's data is hidden and frozen,
cancellable) → in_progress (the registry's erasure steps, one at a time) → propagating (each
recipient outside the database, with its own status and retries) → completed once every recipient
confirmed and the residue scan found nothing; `partial` while a recipient has not confirmed,
`failed` when a step keeps failing or residue was found. Side states: on_hold (legal hold) and
cancelled; refused needs a reason. Every transition is an audit event that names the request's
tombstone id, never the subject.

Each step runs inside a transaction that also records its outcome: a worker killed mid-step leaves
nothing behind, and the step runs again from scratch; a worker killed between steps leaves the
request in_progress, and the sweeper (privacy_sweep, every 30 s) enqueues it again.
"""

from __future__ import annotations

import calendar
import logging
import secrets
import time
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac

from tenants import personal_data
from tenants.audit import SYSTEM, Actor, audit_record
from tenants.models import Tenant
from tenants.models_erasure import (
    ErasureRecipientStatus,
    ErasureRequest,
    ErasureStepRun,
    ErasureSuppression,
    PrivacySettings,
)
from tenants.personal_data import Subject
from tenants.residue import ResidueReport, identifiers_replace, residue_scan

logger = logging.getLogger(__name__)

State = ErasureRequest.State
MAX_EXTENSION_MONTHS = 2
MAX_STEP_ATTEMPTS = 5
# A running request that made no progress for this long is taken to have lost its worker.
STALL_AFTER = timedelta(minutes=2)
# How long one task keeps advancing a request before it hands over to a fresh task.
TASK_BUDGET_SECONDS = 20.0
RECEIPT_KEYS = ("receipt_id", "reference", "erased_at", "counts")
# Columns where a request holds its subject's identifiers on purpose while it runs.
OWN_COLUMNS = (("tenants_erasurerequest", "identifiers"), ("tenants_erasurerequest", "subject_label"))


def add_months(moment: datetime, months: int) -> datetime:
    """Return the same day `months` later, or the month's last day if it is shorter (Art. 12(3))."""
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    return moment.replace(year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1]))


def privacy_settings_get(*, tenant: Tenant) -> PrivacySettings:
    found = PrivacySettings.objects.filter(tenant=tenant).first()
    return found if found is not None else PrivacySettings(tenant=tenant)


@transaction.atomic
def privacy_settings_update(*, actor: Actor, tenant: Tenant, grace_days: int, suppression_days: int) -> PrivacySettings:
    if not 0 <= grace_days <= 90:
        raise ValidationError({"grace_days": "Choose a grace period of 0 to 90 days."})
    if not 1 <= suppression_days <= 3650:
        raise ValidationError({"suppression_days": "Choose 1 to 3650 days."})
    found, _ = PrivacySettings.objects.get_or_create(tenant=tenant)
    before = {"grace_days": found.grace_days, "suppression_days": found.suppression_days}
    found.grace_days, found.suppression_days = grace_days, suppression_days
    found.save(update_fields=["grace_days", "suppression_days"])
    audit_record(
        actor=actor,
        tenant=tenant,
        action="privacy.settings_changed",
        target=found,
        before=before,
        after={"grace_days": grace_days, "suppression_days": suppression_days},
    )
    return found


def subject_of(request: ErasureRequest) -> Subject:
    held = request.identifiers or {}
    return Subject(
        kind=request.subject_kind,
        tenant_id=request.tenant_id,
        subject_id=request.subject_id,
        tombstone=request.tombstone,
        username=held.get("username", ""),
        identifiers=list(held.get("values", [])),
    )


def subject_describe(*, tenant: Tenant, kind: str, subject_id: int) -> str | None:
    """Return the subject's display name from the handler that holds it, or None if none does."""
    probe = Subject(kind=kind, tenant_id=tenant.pk, subject_id=subject_id, tombstone="")
    for handler in personal_data.handlers(kind):
        if handler.describe is not None and (label := handler.describe(probe)) is not None:
            return label
    return None


def _audit(actor: Actor, request: ErasureRequest, action: str, **after: Any) -> None:
    audit_record(
        actor=actor,
        tenant=request.tenant,
        action=f"erasure.{action}",
        target=request,
        after={"tombstone": request.tombstone, "subject_kind": request.subject_kind, "state": request.state, **after},
    )


def _locked(request: ErasureRequest) -> ErasureRequest:
    return ErasureRequest.objects.select_for_update().select_related("tenant").get(pk=request.pk)


def _require(request: ErasureRequest, *states: str) -> None:
    if request.state not in states:
        raise ValidationError(f"This request is {request.get_state_display().lower()}; that is not possible now.")


# --- Requests and their states ----------------------------------------------------------------


@transaction.atomic
def erasure_request_create(
    *, actor: Actor, tenant: Tenant, subject_kind: str, subject_id: int, asked_by: str, verification: str
) -> ErasureRequest:
    """Record an erasure request: who asked, how they were verified; due one month after receipt."""
    if subject_kind not in personal_data.SUBJECT_KINDS:
        raise ValidationError({"subject_kind": "Unknown kind of subject."})
    asked_by, verification = asked_by.strip(), verification.strip()
    if not asked_by or not verification:
        raise ValidationError("Record who asked and how their identity was verified.")
    label = subject_describe(tenant=tenant, kind=subject_kind, subject_id=subject_id)
    if label is None:
        raise ValidationError("There is no such subject in this tenant.")
    open_request = ErasureRequest.objects.filter(
        tenant=tenant, subject_kind=subject_kind, subject_id=subject_id
    ).exclude(state__in=ErasureRequest.CLOSED_STATES)
    if open_request.exists():
        raise ValidationError("An erasure request for this subject is already open.")
    now = timezone.now()
    request = ErasureRequest.objects.create(
        tenant=tenant,
        subject_kind=subject_kind,
        subject_id=subject_id,
        subject_label=label,
        tombstone=f"ts_{secrets.token_hex(8)}",
        requested_by=actor.user,
        asked_by=asked_by[:200],
        verification=verification[:500],
        received_at=now,
        due_at=add_months(now, 1),
        grace_days=privacy_settings_get(tenant=tenant).grace_days,
    )
    _audit(actor, request, "received", due_at=request.due_at.isoformat())
    return request


def _hold(request: ErasureRequest) -> None:
    subject = subject_of(request)
    request.saved_state = {
        handler.name: handler.hold(subject) for handler in personal_data.handlers(request.subject_kind)
    }


def _release(request: ErasureRequest) -> None:
    subject = subject_of(request)
    for handler in personal_data.handlers(request.subject_kind):
        handler.release(subject, (request.saved_state or {}).get(handler.name, {}))
    request.saved_state = {}


@transaction.atomic
def erasure_schedule(*, actor: Actor, request: ErasureRequest) -> ErasureRequest:
    """Start the grace period: the subject's data is hidden and frozen until it ends or is cancelled."""
    request = _locked(request)
    _require(request, State.RECEIVED)
    if request.subject_kind == personal_data.TENANT and actor is not SYSTEM and actor.role != "owner":
        raise ValidationError("Only the tenant's owner can confirm its offboarding.")
    request.state = State.SCHEDULED
    request.grace_until = timezone.now() + timedelta(days=request.grace_days)
    _hold(request)
    request.save(update_fields=["state", "grace_until", "saved_state"])
    _audit(actor, request, "scheduled", grace_until=request.grace_until.isoformat())
    if request.grace_days == 0:
        transaction.on_commit(lambda: _enqueue_start(request.pk))
    return request


@transaction.atomic
def erasure_cancel(*, actor: Actor, request: ErasureRequest) -> ErasureRequest:
    """Cancel before execution: the hold is lifted and the data is left as it was."""
    request = _locked(request)
    _require(request, State.RECEIVED, State.SCHEDULED, State.ON_HOLD)
    _release(request)
    request.state, request.finished_at = State.CANCELLED, timezone.now()
    request.save(update_fields=["state", "saved_state", "finished_at"])
    _audit(actor, request, "cancelled")
    return request


@transaction.atomic
def erasure_refuse(*, actor: Actor, request: ErasureRequest, reason: str) -> ErasureRequest:
    """Refuse the request (Art. 12(4)); the reason is recorded and shown on the receipt."""
    reason = reason.strip()
    if not reason:
        raise ValidationError({"reason": "A refusal needs a reason."})
    request = _locked(request)
    _require(request, State.RECEIVED, State.SCHEDULED, State.ON_HOLD)
    _release(request)
    request.state, request.refusal_reason, request.finished_at = State.REFUSED, reason[:500], timezone.now()
    request.save(update_fields=["state", "refusal_reason", "saved_state", "finished_at"])
    _audit(actor, request, "refused", reason=request.refusal_reason)
    return request


@transaction.atomic
def erasure_extend(*, actor: Actor, request: ErasureRequest, months: int, reason: str) -> ErasureRequest:
    """Extend the due date by up to two further months in all (Art. 12(3)); a reason is required."""
    reason = reason.strip()
    if not reason:
        raise ValidationError({"reason": "An extension needs a reason."})
    if months not in range(1, MAX_EXTENSION_MONTHS + 1):
        raise ValidationError({"months": "Extend by one or two months."})
    request = _locked(request)
    if request.state in ErasureRequest.CLOSED_STATES:
        raise ValidationError("This request is closed.")
    due = add_months(request.received_at, 1 + months)
    if due <= request.due_at:
        raise ValidationError({"months": "The request is already extended that far."})
    request.due_at, request.extension_reason = due, reason[:500]
    request.save(update_fields=["due_at", "extension_reason"])
    _audit(actor, request, "extended", due_at=due.isoformat(), reason=request.extension_reason)
    return request


@transaction.atomic
def erasure_hold(*, actor: Actor, request: ErasureRequest, reason: str, until: datetime) -> ErasureRequest:
    """Put a legal hold on the request: nothing is erased before `until` or a release."""
    reason = reason.strip()
    if not reason:
        raise ValidationError({"reason": "A legal hold needs a reason."})
    if until <= timezone.now():
        raise ValidationError({"until": "A legal hold ends in the future."})
    request = _locked(request)
    _require(request, State.RECEIVED, State.SCHEDULED)
    if request.state == State.RECEIVED:
        _hold(request)
    request.state_before_hold, request.state = request.state, State.ON_HOLD
    request.hold_reason, request.hold_until = reason[:500], until
    request.save(update_fields=["state", "state_before_hold", "hold_reason", "hold_until", "saved_state"])
    _audit(actor, request, "held", reason=request.hold_reason, until=until.isoformat())
    return request


@transaction.atomic
def erasure_release_hold(*, actor: Actor, request: ErasureRequest) -> ErasureRequest:
    request = _locked(request)
    _require(request, State.ON_HOLD)
    request.state = State.SCHEDULED
    if request.grace_until is None:
        request.grace_until = timezone.now() + timedelta(days=request.grace_days)
    request.save(update_fields=["state", "grace_until"])
    _audit(actor, request, "released", grace_until=request.grace_until.isoformat())
    return request


@transaction.atomic
def erasure_start(*, request_id: int, now: datetime | None = None) -> ErasureRequest | None:
    """Begin execution once the grace period is over: collect identifiers, lay out the steps."""
    now = now or timezone.now()
    request = ErasureRequest.objects.select_for_update().select_related("tenant").filter(pk=request_id).first()
    if request is None or request.state != State.SCHEDULED or (request.grace_until and request.grace_until > now):
        return None
    subject = subject_of(request)
    identifiers: list[str] = []
    for handler in personal_data.handlers(request.subject_kind):
        identifiers.extend(value for value in handler.identifiers(subject) if value and value not in identifiers)
    request.identifiers = {"username": request.subject_label, "values": identifiers}
    subject = subject_of(request)
    position = 0
    for handler in personal_data.handlers(request.subject_kind):
        for step in handler.erasure_steps(subject):
            position += 1
            ErasureStepRun.objects.get_or_create(
                request=request, name=f"{handler.name}.{step.name}", defaults={"position": position}
            )
    request.state, request.started_at, request.last_progress_at = State.IN_PROGRESS, now, now
    request.save(update_fields=["state", "identifiers", "started_at", "last_progress_at"])
    _audit(SYSTEM, request, "started", steps=position)
    transaction.on_commit(lambda: _enqueue_execute(request.pk))
    return request


@transaction.atomic
def erasure_retry(*, actor: Actor, request: ErasureRequest) -> ErasureRequest:
    """Run a failed request again (its done steps stay done), or retry recipients that gave up."""
    request = _locked(request)
    _require(request, State.FAILED, State.PARTIAL)
    request.steps.filter(state=ErasureStepRun.State.FAILED).update(state=ErasureStepRun.State.PENDING, attempts=0)
    request.recipients.filter(state=ErasureRecipientStatus.State.FAILED).update(
        state=ErasureRecipientStatus.State.PENDING, attempts=0, next_attempt_at=None
    )
    pending_steps = request.steps.exclude(state=ErasureStepRun.State.DONE).exists()
    request.state = State.IN_PROGRESS if pending_steps or not request.recipients.exists() else State.PROPAGATING
    request.last_error, request.last_progress_at, request.wake_at = "", timezone.now(), None
    request.save(update_fields=["state", "last_error", "last_progress_at", "wake_at"])
    _audit(actor, request, "retried")
    if request.state == State.IN_PROGRESS:
        transaction.on_commit(lambda: _enqueue_execute(request.pk))
    else:
        transaction.on_commit(lambda: _enqueue_recipients(request.pk))
    return request


# --- Tenant offboarding -------------------------------------------------------------------------

# A suspended tenant whose owner never confirmed its offboarding is offboarded after this long.
OFFBOARD_AFTER_SUSPENDED = timedelta(days=30)


@transaction.atomic
def tenant_offboarding_request(*, actor: Actor, tenant: Tenant, reason: str) -> ErasureRequest:
    """Open the erasure of a whole tenant (platform staff): its owner confirms it, or it runs once
    the tenant has been suspended for OFFBOARD_AFTER_SUSPENDED."""
    reason = reason.strip()
    if not reason:
        raise ValidationError({"reason": "Give the reason for offboarding this tenant."})
    if ErasureRequest.objects.filter(tenant=tenant, subject_kind=personal_data.TENANT).exclude(
        state__in=ErasureRequest.CLOSED_STATES
    ):
        raise ValidationError("This tenant's offboarding is already open.")
    now = timezone.now()
    request = ErasureRequest.objects.create(
        tenant=tenant,
        subject_kind=personal_data.TENANT,
        subject_id=tenant.pk,
        subject_label=tenant.name,
        tombstone=f"ts_{secrets.token_hex(8)}",
        requested_by=actor.user,
        asked_by="Platform staff",
        verification=reason[:500],
        received_at=now,
        due_at=add_months(now, 1),
        grace_days=privacy_settings_get(tenant=tenant).grace_days,
    )
    _audit(actor, request, "offboarding_requested")
    audit_record(
        actor=actor,
        tenant=None,
        action="erasure.offboarding_requested",
        target=request,
        after={"tenant_id": tenant.pk, "tombstone": request.tombstone},
    )
    return request


def _suspended_since(tenant: Tenant) -> datetime | None:
    from tenants.models import AuditEvent

    if not tenant.is_suspended:
        return None
    event = AuditEvent.objects.filter(tenant=tenant, action="tenant.suspended").order_by("-sequence").first()
    return event.created_at if event is not None else None


def erasure_child_open(*, parent: ErasureRequest, kind: str, subject_id: int) -> ErasureRequest:
    """Open (or adopt) the request of one account or admin of an offboarded tenant, started at once."""
    now = timezone.now()
    existing = (
        ErasureRequest.objects.filter(tenant_id=parent.tenant_id, subject_kind=kind, subject_id=subject_id)
        .exclude(state__in=ErasureRequest.CLOSED_STATES)
        .first()
    )
    if existing is not None:
        ErasureRequest.objects.filter(pk=existing.pk).update(parent=parent)
        return existing
    label = subject_describe(tenant=parent.tenant, kind=kind, subject_id=subject_id) or ""
    child = ErasureRequest.objects.create(
        tenant_id=parent.tenant_id,
        parent=parent,
        subject_kind=kind,
        subject_id=subject_id,
        subject_label=label,
        tombstone=f"ts_{secrets.token_hex(8)}",
        asked_by=f"Offboarding of the tenant ({parent.tombstone})",
        verification=f"Part of request {parent.tombstone}",
        received_at=now,
        due_at=parent.due_at,
        grace_days=0,
        state=State.SCHEDULED,
        grace_until=now,
    )
    _hold(child)
    child.save(update_fields=["saved_state"])
    _audit(SYSTEM, child, "scheduled", parent=parent.tombstone)
    transaction.on_commit(lambda: _enqueue_start(child.pk))
    return child


# --- Execution ---------------------------------------------------------------------------------


def _step_of(name: str, subject: Subject) -> personal_data.ErasureStep:
    handler_name, step_name = name.split(".", 1)
    for handler in personal_data.handlers(subject.kind):
        if handler.name == handler_name:
            for step in handler.erasure_steps(subject):
                if step.name == step_name:
                    return step
    raise LookupError(f"No erasure step {name} is registered")


def _scrub(text: str, subject: Subject) -> str:
    """Return text with the subject's identifiers replaced by the tombstone (for error messages)."""
    return identifiers_replace(text, subject.identifiers, subject.tombstone)[:500]


def erasure_advance(*, request_id: int) -> str:
    """Run the request's next step once (one batch of it); return what happened.

    "ran" (call again), "waiting" (the step waits for the outside world; the sweeper wakes the
    request at wake_at), "propagating" (every step is done), "error" (the step failed and will be
    retried) or "idle" (nothing to do in this state).
    """
    with transaction.atomic():
        request = ErasureRequest.objects.select_for_update().select_related("tenant").filter(pk=request_id).first()
        if request is None or request.state != State.IN_PROGRESS:
            return "idle"
        now = timezone.now()
        if request.last_error and request.wake_at is not None and request.wake_at > now:
            return "backoff"  # a step failed a moment ago: let the backoff pass first
        run = request.steps.filter(state=ErasureStepRun.State.PENDING).order_by("position").first()
        if run is None:
            _enter_propagation(request)
            return "propagating"
        subject = subject_of(request)
        try:
            with transaction.atomic():
                outcome = _step_of(run.name, subject).run(subject)
        except Exception as error:  # the savepoint undid the step's work; count the attempt
            logger.exception("Erasure step %s of request %s failed", run.name, request.pk)
            run.attempts += 1
            run.last_error = _scrub(f"{type(error).__name__}: {error}", subject)
            if run.attempts >= MAX_STEP_ATTEMPTS:
                run.state = ErasureStepRun.State.FAILED
                request.state, request.last_error = State.FAILED, f"Step {run.name} failed {run.attempts} times."
                _audit(SYSTEM, request, "failed", step=run.name)
            else:
                request.wake_at = now + timedelta(seconds=30 * 2 ** (run.attempts - 1))
                request.last_error = run.last_error
            run.save(update_fields=["attempts", "last_error", "state"])
            request.last_progress_at = now
            request.save(update_fields=["state", "last_error", "wake_at", "last_progress_at"])
            return "error"
        run.runs += 1
        for key, value in outcome.counts.items():
            run.counts[key] = run.counts.get(key, 0) + value
        request.last_progress_at, request.wake_at, request.last_error = now, None, ""
        result = "ran"
        if outcome.done:
            run.state, run.finished_at = ErasureStepRun.State.DONE, now
            _audit(SYSTEM, request, "step_completed", step=run.name, counts=run.counts)
        elif outcome.wait_seconds:
            request.wake_at = now + timedelta(seconds=outcome.wait_seconds)
            result = "waiting"
        run.save(update_fields=["runs", "counts", "state", "finished_at"])
        request.save(update_fields=["last_progress_at", "wake_at", "last_error"])
        return result


def erasure_execute(*, request_id: int, budget_seconds: float = TASK_BUDGET_SECONDS) -> str:
    """Advance a request until it waits, moves on to propagation or the time budget is spent."""
    deadline = time.monotonic() + budget_seconds
    while True:
        outcome = erasure_advance(request_id=request_id)
        if outcome != "ran":
            return outcome
        if time.monotonic() > deadline:
            # Hand over to a fresh task rather than hold one worker for a huge account.
            transaction.on_commit(lambda: _enqueue_execute(request_id))
            return "continued"


def _enter_propagation(request: ErasureRequest) -> None:
    """Every local step is done: open a status row per recipient, or finish if there are none."""
    for recipient in personal_data.recipients(request.subject_kind):
        ErasureRecipientStatus.objects.get_or_create(request=request, name=recipient.name)
    request.state = State.PROPAGATING
    request.save(update_fields=["state"])
    _audit(SYSTEM, request, "propagating", recipients=sorted(request.recipients.values_list("name", flat=True)))
    if request.recipients.exists():
        transaction.on_commit(lambda: _enqueue_recipients(request.pk))
    else:
        _finish(request)


def recipient_backoff(attempts: int) -> timedelta:
    """Return the wait before attempt `attempts + 1`: 30 s doubling, at most 6 hours."""
    return timedelta(seconds=min(30 * 2 ** max(attempts - 1, 0), 6 * 3600))


def erasure_propagate(*, status_id: int, now: datetime | None = None) -> str:
    """Ask one recipient to erase the subject; record its receipt, or the failure and the next try.

    The call happens outside any transaction (no lock is held over the network); a recipient must
    treat a repeated reference as the same erasure, since a worker killed after the call but before
    the record is written will ask again.
    """
    now = now or timezone.now()
    status = ErasureRecipientStatus.objects.select_related("request", "request__tenant").filter(pk=status_id).first()
    if status is None or status.state != ErasureRecipientStatus.State.PENDING:
        return "idle"
    request = status.request
    if request.state not in (State.PROPAGATING, State.PARTIAL):
        return "idle"
    if status.next_attempt_at is not None and status.next_attempt_at > now:
        return "not_due"
    recipient = personal_data.recipient_get(status.name)
    subject = subject_of(request)
    receipt: dict[str, Any] | None = None
    error_text, refused = "", False
    if recipient is None:
        error_text = "This recipient is no longer registered."
    else:
        try:
            receipt = recipient.propagate(subject, request.tombstone)
            missing = [key for key in RECEIPT_KEYS if key not in (receipt or {})]
            if missing:
                raise ValueError(f"The receipt lacks {', '.join(missing)}")
        except personal_data.RecipientRefused as error:  # asking again cannot help: fail it now
            receipt, refused, error_text = None, True, _scrub(str(error), subject)
        except Exception as error:  # the recipient is down or failed: retry with backoff
            receipt, error_text = None, _scrub(f"{type(error).__name__}: {error}", subject)
    with transaction.atomic():
        status = ErasureRecipientStatus.objects.select_for_update().get(pk=status_id)
        request = ErasureRequest.objects.select_for_update().select_related("tenant").get(pk=request.pk)
        if status.state != ErasureRecipientStatus.State.PENDING:
            return "idle"
        status.attempts += 1
        if receipt is not None:
            status.state, status.confirmed_at, status.receipt, status.last_error = (
                ErasureRecipientStatus.State.CONFIRMED,
                timezone.now(),
                receipt,
                "",
            )
            status.save(update_fields=["state", "confirmed_at", "receipt", "last_error", "attempts"])
            _audit(SYSTEM, request, "recipient_confirmed", recipient=status.name, receipt_id=receipt["receipt_id"])
            if not request.recipients.exclude(state=ErasureRecipientStatus.State.CONFIRMED).exists():
                _finish(request)
            return "confirmed"
        max_attempts = recipient.max_attempts if recipient is not None and not refused else 1
        status.last_error = error_text
        if status.attempts >= max_attempts:
            status.state, status.next_attempt_at = ErasureRecipientStatus.State.FAILED, None
        else:
            status.next_attempt_at = now + recipient_backoff(status.attempts)
        status.save(update_fields=["state", "attempts", "last_error", "next_attempt_at"])
        if request.state == State.PROPAGATING:
            request.state = State.PARTIAL
        if refused:
            # Shown on the request until someone fixes the cause and presses "Retry now".
            request.last_error = f"{status.name} refused the erasure: {error_text}"[:500]
        request.save(update_fields=["state", "last_error"])
        _audit(SYSTEM, request, "recipient_failed", recipient=status.name, attempts=status.attempts, refused=refused)
        return "failed"


def _finish(request: ErasureRequest) -> None:
    """Prove the erasure with the residue scan, then drop what the request held about the subject."""
    subject = subject_of(request)
    # The request's own free text may quote the subject ("alice asked by e-mail"): the tombstone now.
    request.asked_by, request.verification = _scrub(request.asked_by, subject), _scrub(request.verification, subject)
    request.save(update_fields=["asked_by", "verification"])
    report: ResidueReport = residue_scan(identifiers=subject.identifiers, exclude=OWN_COLUMNS)
    request.residue, request.residue_checked_at = report.as_list(), timezone.now()
    if not report.clean:
        request.state, request.last_error = State.FAILED, "The residue scan found the subject's identifiers."
        request.save(update_fields=["state", "last_error", "residue", "residue_checked_at"])
        _audit(SYSTEM, request, "residue_found", hits=request.residue)
        return
    request.identifiers, request.subject_label = {}, ""
    request.state, request.finished_at = State.COMPLETED, timezone.now()
    request.save(
        update_fields=[
            "state",
            "finished_at",
            "identifiers",
            "subject_label",
            "residue",
            "residue_checked_at",
        ]
    )
    _audit(SYSTEM, request, "completed", tables_scanned=report.tables, columns_scanned=report.columns)


# --- Suppression of re-registration ------------------------------------------------------------


def suppression_key(*, tenant_id: int, kind: str, value: str) -> str:
    """Return the keyed hash (HMAC-SHA256 with a key derived from SECRET_KEY) of an erased name."""
    message = f"{tenant_id}:{kind}:{value.strip().lower()}"
    return salted_hmac("tenants.erasure.suppression", message, algorithm="sha256").hexdigest()


def suppression_add(*, tenant_id: int, kind: str, value: str) -> bool:
    tenant = Tenant.objects.get(pk=tenant_id)
    days = privacy_settings_get(tenant=tenant).suppression_days
    now = timezone.now()
    _, created = ErasureSuppression.objects.update_or_create(
        tenant_id=tenant_id,
        subject_kind=kind,
        key_hash=suppression_key(tenant_id=tenant_id, kind=kind, value=value),
        defaults={"created_at": now, "expires_at": now + timedelta(days=days)},
    )
    return created


def suppression_check(*, tenant: Tenant, kind: str, value: str) -> None:
    """Refuse (ValidationError) a name erased from this tenant within its suppression period."""
    key = suppression_key(tenant_id=tenant.pk, kind=kind, value=value)
    if ErasureSuppression.objects.filter(
        tenant=tenant, subject_kind=kind, key_hash=key, expires_at__gt=timezone.now()
    ).exists():
        raise ValidationError({"username": "This name was erased at its owner's request and cannot be used yet."})


# --- The sweeper -------------------------------------------------------------------------------


def _enqueue_execute(request_id: int) -> None:
    from tenants.tasks_erasure import erasure_execute_task

    erasure_execute_task.delay(request_id)


def _enqueue_start(request_id: int) -> None:
    from tenants.tasks_erasure import erasure_start_task

    erasure_start_task.delay(request_id)


def _enqueue_recipients(request_id: int) -> None:
    from tenants.tasks_erasure import erasure_propagate_task

    for status_id in ErasureRecipientStatus.objects.filter(
        request_id=request_id, state=ErasureRecipientStatus.State.PENDING
    ).values_list("pk", flat=True):
        erasure_propagate_task.delay(status_id)


def privacy_sweep(*, now: datetime | None = None) -> dict[str, int]:
    """Move every request whose time came: start those past their grace period, lift legal holds
    that ended, resume running requests that stalled or whose wait is over, retry recipients that
    are due, and delete export archives past their expiry."""
    from tenants.services_export import exports_expire

    now = now or timezone.now()
    counts = {"started": 0, "released": 0, "resumed": 0, "recipients": 0, "exports_expired": 0}
    for request_id in ErasureRequest.objects.filter(state=State.SCHEDULED, grace_until__lte=now).values_list(
        "pk", flat=True
    ):
        counts["started"] += erasure_start(request_id=request_id, now=now) is not None
    for request in ErasureRequest.objects.filter(
        state=State.RECEIVED, subject_kind=personal_data.TENANT, tenant__status=Tenant.Status.SUSPENDED
    ).select_related("tenant"):
        since = _suspended_since(request.tenant)
        if since is not None and since <= now - OFFBOARD_AFTER_SUSPENDED:
            erasure_schedule(actor=SYSTEM, request=request)
            counts["offboardings_scheduled"] = counts.get("offboardings_scheduled", 0) + 1
    for request in ErasureRequest.objects.filter(state=State.ON_HOLD, hold_until__lte=now).select_related("tenant"):
        erasure_release_hold(actor=SYSTEM, request=request)
        counts["released"] += 1
    stalled = ErasureRequest.objects.filter(state=State.IN_PROGRESS)
    for request_id, wake_at, last_progress_at in stalled.values_list("pk", "wake_at", "last_progress_at"):
        due = wake_at <= now if wake_at is not None else (last_progress_at or now) <= now - STALL_AFTER
        if due:
            counts["resumed"] += 1
            transaction.on_commit(partial(_enqueue_execute, request_id))
    due_recipients = ErasureRecipientStatus.objects.filter(
        state=ErasureRecipientStatus.State.PENDING, request__state__in=[State.PROPAGATING, State.PARTIAL]
    ).exclude(next_attempt_at__gt=now)
    from tenants.tasks_erasure import erasure_propagate_task

    for status_id in due_recipients.values_list("pk", flat=True):
        counts["recipients"] += 1
        transaction.on_commit(partial(erasure_propagate_task.delay, status_id))
    counts["exports_expired"] = exports_expire(now=now)
    return counts
