"""The personal-data registry: what each app holds about a person, and how to export and erase it.

GDPR export, erasure and the residue scan must reach every app, yet the ground floor may not import
the floors above it. So each app registers, from its AppConfig.ready(), a Handler naming the models
it covers and giving its export sections and erasure steps; the workflow (tenants/services_erasure.py)
walks the registry and knows no app's tables. A test fails when a tenant-owned model with a text,
JSON or address field is covered by no handler and not exempted here with a reason, so a new model
cannot be forgotten silently.

Recipients are the systems outside the portal's database that must forget the person too (the
licensing service): each is called with the subject and the request's reference and returns a
receipt, and has its own status row and retries (docs/privacy.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

BACKUP_ACCOUNT = "backup_account"
ADMIN = "admin"
TENANT = "tenant"
SUBJECT_KINDS = (BACKUP_ACCOUNT, ADMIN, TENANT)


@dataclass
class Subject:
    """The person (or whole tenant) a request is about, as the steps see it.

    `identifiers` are the strings the portal held that name the subject (username, e-mail, device
    names and ids, addresses...), collected when execution starts and kept on the request only
    until it completes: the audit redaction and the residue scan need them after the rows are gone.
    """

    kind: str
    tenant_id: int
    subject_id: int
    tombstone: str
    username: str = ""
    identifiers: list[str] = field(default_factory=list)

    @property
    def erased_label(self) -> str:
        """Return what replaces the subject's name where a record is kept (audit events)."""
        return f"erased:{self.tombstone}"


@dataclass(frozen=True)
class StepOutcome:
    """What one run of a step did. `done=False` means "call me again": another batch is left
    (`wait_seconds=0`) or the step waits for the outside world (`wait_seconds>0`)."""

    done: bool = True
    counts: dict[str, int] = field(default_factory=dict)
    wait_seconds: int = 0


@dataclass(frozen=True)
class ErasureStep:
    """One idempotent unit of erasure. `run` is called inside a transaction that also records its
    outcome, so an interrupted run leaves no trace and a repeated one finds nothing left to do."""

    name: str
    run: Callable[[Subject], StepOutcome]


@dataclass(frozen=True)
class ExportSection:
    """One part of an export archive: rows as dicts (a fresh iterator per call); also CSV if tabular."""

    name: str
    rows: Callable[[Subject], Iterable[dict[str, Any]]]
    tabular: bool = True


@dataclass(frozen=True)
class Kept:
    """Something an erasure keeps, for the receipt: what, why (legal basis), for how long."""

    what: str
    legal_basis: str
    until: str


@dataclass(frozen=True)
class Handler:
    """An app's personal data for some kinds of subject. `models` are "app_label.ModelName"."""

    name: str
    order: int
    models: tuple[str, ...]
    kinds: frozenset[str]
    identifiers: Callable[[Subject], list[str]] = lambda subject: []
    # Called when the grace period starts (hide and freeze the subject's data) and when the request is
    # cancelled or refused (undo that). The dict `hold` returns is handed back to `release`.
    hold: Callable[[Subject], dict[str, Any]] = lambda subject: {}
    release: Callable[[Subject, dict[str, Any]], None] = lambda subject, saved: None
    export_sections: Callable[[Subject], list[ExportSection]] = lambda subject: []
    erasure_steps: Callable[[Subject], list[ErasureStep]] = lambda subject: []
    kept: tuple[Kept, ...] = ()
    # Whether the subject exists in this handler's data (a request can only be opened for one that does).
    describe: Callable[[Subject], str | None] | None = None
    # The subjects of this handler's kinds in a tenant (ids), for a tenant's offboarding.
    subjects_of_tenant: Callable[[int], list[int]] | None = None


class RecipientRefused(Exception):
    """Raised by a recipient's `propagate` when the system understood the request and will not carry
    it out (an unknown portal, an invalid request): asking again cannot help, so the recipient fails
    at once and the request shows why. Any other exception counts as "try again later"."""


@dataclass(frozen=True)
class Recipient:
    """A system outside the database that must erase the subject too; `propagate` returns a receipt
    with at least receipt_id, reference, erased_at and counts, and raises when it cannot (see
    RecipientRefused)."""

    name: str
    propagate: Callable[[Subject, str], dict[str, Any]]
    # A tenant's offboarding reaches recipients through the requests of its accounts and admins.
    kinds: frozenset[str] = frozenset({BACKUP_ACCOUNT, ADMIN})
    max_attempts: int = 12


_handlers: dict[str, Handler] = {}
_recipients: dict[str, Recipient] = {}
# Model labels (or "label.field") a handler need not cover, with the reason; checked by a test.
EXEMPT: dict[str, str] = {}


def handler_register(handler: Handler) -> None:
    """Add an app's handler; registering the same name again replaces it (app reloads in tests)."""
    _handlers[handler.name] = handler


def recipient_register(recipient: Recipient) -> None:
    _recipients[recipient.name] = recipient


def recipient_unregister(name: str) -> None:
    _recipients.pop(name, None)


def exempt(label: str, reason: str) -> None:
    """Declare that a model (or one field, "app.Model.field") holds nothing personal, and why."""
    EXEMPT[label] = reason


def handlers(kind: str | None = None) -> list[Handler]:
    """Return the handlers for a kind of subject (every handler when None), in their order."""
    chosen = [handler for handler in _handlers.values() if kind is None or kind in handler.kinds]
    return sorted(chosen, key=lambda handler: (handler.order, handler.name))


def recipients(kind: str) -> list[Recipient]:
    return sorted((r for r in _recipients.values() if kind in r.kinds), key=lambda recipient: recipient.name)


def recipient_get(name: str) -> Recipient | None:
    return _recipients.get(name)


def covered_models() -> set[str]:
    return {label for handler in _handlers.values() for label in handler.models}
