"""What the tenancy app holds about people: the audit log, exports, staff access texts, the erasure
records themselves, and a tenant admin's own login (membership, keys, two-factor devices, login
attempts, user row). Registered with the registry from TenantsConfig.ready()."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Q, TextField
from django.db.models.functions import Cast

from tenants import personal_data as registry
from tenants.audit_chain import PLATFORM_CHAIN, chain_name, personal_fields_erase
from tenants.models import ApiKey, AuditEvent, Invitation, Membership
from tenants.models_access import AccessRequest
from tenants.personal_data import ADMIN, BACKUP_ACCOUNT, TENANT, ErasureStep, Handler, Kept, StepOutcome, Subject
from tenants.residue import identifiers_replace, mentions, search_variants, token_patterns, token_regexes

AUDIT_BATCH = 1000


def _step_audit(subject: Subject) -> StepOutcome:
    """Erase the personal fields of audit events that name the subject; the action, target, time
    and role stay, and the chain still verifies (docs/audit.md). Batched by id: bounded memory."""
    variants = search_variants(subject.identifiers)
    if not variants:
        return StepOutcome(counts={"audit_events": 0})
    patterns = token_patterns(variants)
    matches = Q()
    for regex in token_regexes(variants):
        matches |= (
            Q(actor_label__iregex=regex)
            | Q(user_agent__iregex=regex)
            | Q(ip_text__iregex=regex)
            | Q(before_text__iregex=regex)
            | Q(after_text__iregex=regex)
        )
    if subject.kind == ADMIN:
        matches |= Q(actor_id=subject.subject_id, personal_erased_at__isnull=True)
    candidates = (
        AuditEvent.objects.filter(chain__in=[chain_name(subject.tenant_id), PLATFORM_CHAIN])
        .annotate(
            ip_text=Cast("ip_address", TextField()),
            before_text=Cast("before", TextField()),
            after_text=Cast("after", TextField()),
        )
        .filter(matches)
        .order_by("pk")
    )
    replacement_of = {
        "actor_label": subject.erased_label,
        "ip_address": None,
        "user_agent": "",
        "before": {"erased": subject.tombstone},
        "after": {"erased": subject.tombstone},
    }
    erased, last_pk = 0, 0
    while events := list(candidates.filter(pk__gt=last_pk)[:AUDIT_BATCH]):
        last_pk = events[-1].pk
        groups: dict[frozenset[str], list[AuditEvent]] = {}
        for event in events:
            acted = mentions(event.actor_label, patterns) or (
                subject.kind == ADMIN and event.actor_id == subject.subject_id
            )
            names = {name for name in ("before", "after", "user_agent") if mentions(getattr(event, name), patterns)}
            if acted:
                names |= {"actor_label", "ip_address", "user_agent"}
            if mentions(event.ip_address, patterns):
                names.add("ip_address")
            if names:  # a match across fields only (the JSON text of a key, say) is nobody's
                groups.setdefault(frozenset(names), []).append(event)
        for names_erased, group in groups.items():
            replacements = {name: replacement_of[name] for name in names_erased}
            erased += personal_fields_erase(group, replacements=replacements)
    return StepOutcome(counts={"audit_events": erased})


def _step_exports(subject: Subject) -> StepOutcome:
    from tenants.services_export import exports_erase

    return StepOutcome(counts={"export_archives": exports_erase(subject=subject)})


def _step_staff_access_texts(subject: Subject) -> StepOutcome:
    """Replace the subject's identifiers in staff access requests' free text with the tombstone."""
    variants = search_variants(subject.identifiers)
    changed = 0
    if not variants:
        return StepOutcome(counts={"staff_access_texts": 0})
    matches = Q()
    for regex in token_regexes(variants):
        matches |= Q(justification__iregex=regex) | Q(ticket_reference__iregex=regex)
        matches |= Q(decision_note__iregex=regex)
    for access in AccessRequest.objects.filter(tenant_id=subject.tenant_id).filter(matches):
        for name in ("justification", "ticket_reference", "decision_note"):
            setattr(access, name, identifiers_replace(getattr(access, name), subject.identifiers, subject.erased_label))
        access.save(update_fields=["justification", "ticket_reference", "decision_note"])
        changed += 1
    return StepOutcome(counts={"staff_access_texts": changed})


def _step_suppression(subject: Subject) -> StepOutcome:
    from tenants.services_erasure import suppression_add

    if not subject.username:
        return StepOutcome(counts={"suppressed": 0})
    return StepOutcome(
        counts={
            "suppressed": int(suppression_add(tenant_id=subject.tenant_id, kind=subject.kind, value=subject.username))
        }
    )


_COMMON_STEPS = [
    ErasureStep("exports", _step_exports),
    ErasureStep("staff_access_texts", _step_staff_access_texts),
    ErasureStep("audit", _step_audit),
    ErasureStep("suppression", _step_suppression),
]

KEPT = (
    Kept(
        "The erasure request and this receipt, under the tombstone id only",
        "GDPR Art. 5(2) and 17: accountability, proof that the request was handled",
        "as long as the tenant keeps its records of requests",
    ),
    Kept(
        "Audit events about the subject: the action, its time, role and target type, with names, addresses, "
        "user agents and before/after values removed (the actor is shown as the tombstone id)",
        "GDPR Art. 17(3)(e) and Art. 32: the integrity of the security log",
        "as long as the tenant's audit log",
    ),
    Kept(
        "A keyed hash (HMAC) of the username, never the name, so it cannot be registered again at once",
        "GDPR Art. 6(1)(f): honouring the erasure (suppression of re-registration)",
        "the tenant's suppression period",
    ),
)

COMMON_HANDLER = Handler(
    name="records",
    order=90,
    models=(
        "tenants.AuditEvent",
        "tenants.DataExport",
        "tenants.AccessRequest",
        "tenants.ErasureRequest",
        "tenants.ErasureStepRun",
        "tenants.ErasureRecipientStatus",
        "tenants.ErasureSuppression",
    ),
    kinds=frozenset({BACKUP_ACCOUNT, ADMIN}),
    erasure_steps=lambda subject: list(_COMMON_STEPS),
    kept=KEPT,
)


# --- A tenant admin's own data -----------------------------------------------------------------


def _admin_membership(subject: Subject) -> Membership | None:
    return (
        Membership.objects.filter(tenant_id=subject.tenant_id, user_id=subject.subject_id)
        .select_related("user")
        .first()
    )


def _admin_describe(subject: Subject) -> str | None:
    membership = _admin_membership(subject)
    if membership is None:
        return None
    # A person in several tenants has one login: each tenant erases only what it holds, so the
    # login itself would stay. Such a request must go to the platform operator instead.
    if Membership.objects.filter(user_id=subject.subject_id).exclude(tenant_id=subject.tenant_id).exists():
        return None
    return membership.user.get_username()


def _admin_identifiers(subject: Subject) -> list[str]:
    membership = _admin_membership(subject)
    if membership is None:
        return []
    user = membership.user
    values = [user.get_username(), user.email, user.first_name, user.last_name]
    values += [
        key_name
        for key_name in ApiKey.objects.filter(tenant_id=subject.tenant_id, user=user).values_list("name", flat=True)
        if len(key_name) > 5
    ]
    addresses = (
        AuditEvent.objects.filter(chain=chain_name(subject.tenant_id), actor_id=user.pk, ip_address__isnull=False)
        .values_list("ip_address", flat=True)
        .distinct()[:50]
    )
    values += [str(address) for address in addresses]
    return [value for value in dict.fromkeys(values) if value]


def _admin_steps(subject: Subject) -> list[ErasureStep]:
    user_id = subject.subject_id
    tenant_id = subject.tenant_id

    def api_keys(s: Subject) -> StepOutcome:
        return StepOutcome(counts={"api_keys": ApiKey.objects.filter(tenant_id=tenant_id, user_id=user_id).delete()[0]})

    def invitations(s: Subject) -> StepOutcome:
        emails = [value for value in s.identifiers if "@" in value]
        deleted = Invitation.objects.filter(tenant_id=tenant_id, email__in=emails).delete()[0]
        Invitation.objects.filter(tenant_id=tenant_id, invited_by_id=user_id).update(invited_by=None)
        Invitation.objects.filter(tenant_id=tenant_id, accepted_by_id=user_id).update(accepted_by=None)
        return StepOutcome(counts={"invitations": deleted})

    def two_factor(s: Subject) -> StepOutcome:
        from django_otp.plugins.otp_static.models import StaticDevice
        from django_otp.plugins.otp_totp.models import TOTPDevice

        totp = TOTPDevice.objects.filter(user_id=user_id).delete()[0]
        static = StaticDevice.objects.filter(user_id=user_id).delete()[0]
        return StepOutcome(counts={"two_factor_devices": totp + static})

    def login_attempts(s: Subject) -> StepOutcome:
        from axes.models import AccessAttempt, AccessFailureLog, AccessLog

        names = [s.username] if s.username else []
        deleted = sum(
            model.objects.filter(username__in=names).delete()[0]
            for model in (AccessAttempt, AccessFailureLog, AccessLog)
        )
        return StepOutcome(counts={"login_records": deleted})

    def membership(s: Subject) -> StepOutcome:
        return StepOutcome(
            counts={"memberships": Membership.objects.filter(tenant_id=tenant_id, user_id=user_id).delete()[0]}
        )

    def login(s: Subject) -> StepOutcome:
        """Pseudonymise the login (it may still be referenced as an actor): no name, no password."""
        user = get_user_model().objects.filter(pk=user_id).first()
        if user is None or user.get_username() == s.tombstone:
            return StepOutcome(counts={"logins": 0})
        user.username, user.email, user.first_name, user.last_name = s.tombstone, "", "", ""
        user.is_active = False
        user.set_unusable_password()
        user.save(update_fields=["username", "email", "first_name", "last_name", "is_active", "password"])
        return StepOutcome(counts={"logins": 1})

    return [
        ErasureStep("api_keys", api_keys),
        ErasureStep("invitations", invitations),
        ErasureStep("two_factor", two_factor),
        ErasureStep("login_attempts", login_attempts),
        ErasureStep("membership", membership),
        ErasureStep("login", login),
    ]


def _admin_export_sections(subject: Subject) -> list[registry.ExportSection]:
    def profile(s: Subject) -> Any:
        membership = _admin_membership(s)
        if membership is not None:
            user = membership.user
            yield {
                "username": user.get_username(),
                "email": user.email,
                "first_name": user.first_name,
                "last_name": user.last_name,
                "role": membership.role,
                "member_since": membership.created_at,
                "last_login": user.last_login,
            }

    def keys(s: Subject) -> Any:
        return (
            ApiKey.objects.filter(tenant_id=s.tenant_id, user_id=s.subject_id)
            .order_by("pk")
            .values("name", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at")
            .iterator()
        )

    def actions(s: Subject) -> Any:
        return (
            AuditEvent.objects.filter(chain=chain_name(s.tenant_id), actor_id=s.subject_id)
            .order_by("sequence")
            .values("created_at", "action", "target_type", "target_id", "ip_address", "user_agent")
            .iterator(chunk_size=2000)
        )

    return [
        registry.ExportSection("profile", profile, tabular=False),
        registry.ExportSection("api_keys", keys),
        registry.ExportSection("audit_actions", actions),
    ]


def _members_only_here(tenant_id: int) -> list[int]:
    """Return the team members of a tenant who belong to no other tenant (their login goes too)."""
    members = Membership.objects.filter(tenant_id=tenant_id).values_list("user_id", flat=True)
    elsewhere = set(
        Membership.objects.filter(user_id__in=members).exclude(tenant_id=tenant_id).values_list("user_id", flat=True)
    )
    return [user_id for user_id in members if user_id not in elsewhere]


ADMIN_HANDLER = Handler(
    name="team",
    order=20,
    models=("tenants.Membership", "tenants.Invitation", "tenants.ApiKey"),
    kinds=frozenset({ADMIN}),
    identifiers=_admin_identifiers,
    export_sections=_admin_export_sections,
    erasure_steps=_admin_steps,
    describe=_admin_describe,
    subjects_of_tenant=_members_only_here,
)


# --- A whole tenant (offboarding) --------------------------------------------------------------


def _tenant_describe(subject: Subject) -> str | None:
    from tenants.models import Tenant

    if subject.subject_id != subject.tenant_id:
        return None
    return Tenant.objects.filter(pk=subject.tenant_id).values_list("name", flat=True).first()


def _tenant_identifiers(subject: Subject) -> list[str]:
    from tenants.models import Tenant

    tenant = Tenant.objects.filter(pk=subject.tenant_id).first()
    return [value for value in (tenant.name, tenant.display_name) if value] if tenant is not None else []


def _parent(subject: Subject) -> Any:
    from tenants.models_erasure import ErasureRequest

    return ErasureRequest.objects.get(tombstone=subject.tombstone)


def _step_children(subject: Subject) -> StepOutcome:
    """Open one request per backup account and per team member, through the same machinery."""
    from tenants.services_erasure import erasure_child_open

    parent, opened = _parent(subject), 0
    for kind in (BACKUP_ACCOUNT, ADMIN):
        known = set(parent.children.filter(subject_kind=kind).values_list("subject_id", flat=True))
        for handler in registry.handlers(kind):
            if handler.subjects_of_tenant is None:
                continue
            for subject_id in handler.subjects_of_tenant(subject.tenant_id):
                if subject_id not in known:
                    erasure_child_open(parent=parent, kind=kind, subject_id=subject_id)
                    known.add(subject_id)
                    opened += 1
    return StepOutcome(counts={"requests": opened})


def _step_await_children(subject: Subject) -> StepOutcome:
    from tenants.models_erasure import ErasureRequest

    children = _parent(subject).children.all()
    if children.exclude(state=ErasureRequest.State.COMPLETED).exists():
        return StepOutcome(done=False, wait_seconds=30)
    return StepOutcome(counts={"completed_requests": children.count()})


def _step_tenant_records(subject: Subject) -> StepOutcome:
    """Delete what is left of the tenant's people: the memberships of people who belong elsewhere
    too, invitations, keys, staff access requests and policy, and every export archive."""
    from tenants.models import AccessPolicy
    from tenants.models_erasure import DataExport

    tenant_id = subject.tenant_id
    counts = {
        "memberships": Membership.objects.filter(tenant_id=tenant_id).delete()[0],
        "invitations": Invitation.objects.filter(tenant_id=tenant_id).delete()[0],
        "api_keys": ApiKey.objects.filter(tenant_id=tenant_id).delete()[0],
        "staff_access_requests": AccessRequest.objects.filter(tenant_id=tenant_id).delete()[0],
        "staff_access_policies": AccessPolicy.objects.filter(tenant_id=tenant_id).delete()[0],
        "export_archives": DataExport.objects.filter(tenant_id=tenant_id)
        .exclude(state=DataExport.State.ERASED)
        .update(state=DataExport.State.ERASED, archive=b"", size_bytes=0),
    }
    return StepOutcome(counts=counts)


def _step_tenant_audit(subject: Subject) -> StepOutcome:
    """Erase the personal fields of every event of the tenant's chain (one batch per run)."""
    events = list(
        AuditEvent.objects.filter(chain=chain_name(subject.tenant_id), personal_erased_at__isnull=True).order_by("pk")[
            :AUDIT_BATCH
        ]
    )
    replacements = {
        "actor_label": subject.erased_label,
        "ip_address": None,
        "user_agent": "",
        "before": None,
        "after": {"erased": subject.tombstone},
    }
    erased = personal_fields_erase(events, replacements=replacements) if events else 0
    return StepOutcome(done=len(events) < AUDIT_BATCH, counts={"audit_events": erased})


def _step_tenant_row(subject: Subject) -> StepOutcome:
    """Keep the tenant row (audit events point at it) under the tombstone, suspended, with no brand."""
    from tenants.models import Tenant

    changed = Tenant.objects.filter(pk=subject.tenant_id).update(
        name=subject.tombstone, display_name="", logo=b"", logo_content_type="", status=Tenant.Status.SUSPENDED
    )
    return StepOutcome(counts={"tenants": changed})


TENANT_HANDLER = Handler(
    name="tenant",
    order=5,
    models=("tenants.Tenant", "tenants.AccessPolicy"),
    kinds=frozenset({TENANT}),
    identifiers=_tenant_identifiers,
    describe=_tenant_describe,
    erasure_steps=lambda subject: [
        ErasureStep("children", _step_children),
        ErasureStep("await_children", _step_await_children),
        ErasureStep("records", _step_tenant_records),
        ErasureStep("audit_identifiers", _step_audit),
        ErasureStep("audit_all", _step_tenant_audit),
        ErasureStep("tenant", _step_tenant_row),
    ],
    kept=(
        Kept(
            "The tenant row under the tombstone id, suspended, without its name or brand",
            "GDPR Art. 5(2): audit events and requests still point at it",
            "as long as the platform keeps its audit log",
        ),
        Kept(
            "The tenant's audit events with every personal field removed; one erasure request and receipt "
            "per account and team member",
            "GDPR Art. 17(3)(e) and Art. 5(2)",
            "as long as the platform keeps its audit log",
        ),
    ),
)


def register() -> None:
    registry.handler_register(COMMON_HANDLER)
    registry.handler_register(ADMIN_HANDLER)
    registry.handler_register(TENANT_HANDLER)
    registry.exempt("tenants.PrivacySettings", "A tenant's erasure settings: no personal data.")
