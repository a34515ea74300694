"""Admin roles inside a tenant and what each may do.

A permission that is not listed for a role is denied: new permissions start closed to everyone but
the roles named here.
"""

from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    TECHNICIAN = "technician", "Technician"
    AUDITOR = "auditor", "Auditor"


EVERY_ROLE = frozenset(Role)

PERMISSIONS: dict[str, frozenset[Role]] = {
    # Reading the tenant's portal at all.
    "tenant.view": EVERY_ROLE,
    "team.view": EVERY_ROLE,
    "team.manage": frozenset({Role.OWNER}),
    "settings.view": EVERY_ROLE,
    "settings.change": frozenset({Role.OWNER, Role.ADMIN}),
    # Tenant-wide security policy, such as mandatory two-factor authentication.
    "security.change": frozenset({Role.OWNER}),
    "audit.view": frozenset({Role.OWNER, Role.ADMIN, Role.AUDITOR}),
    # Every admin manages their own API keys; a key never carries more than its owner's role.
    "apikeys.manage_own": EVERY_ROLE,
    # Backup accounts and their devices.
    "accounts.view": EVERY_ROLE,
    "accounts.manage": frozenset({Role.OWNER, Role.ADMIN}),
    "devices.view": EVERY_ROLE,
    "devices.command": frozenset({Role.OWNER, Role.ADMIN, Role.TECHNICIAN}),
    "devices.manage": frozenset({Role.OWNER, Role.ADMIN}),
    # Platform staff access: reading the requests and the consent log, answering requests, the policy.
    "staff_access.view": frozenset({Role.OWNER, Role.ADMIN, Role.AUDITOR}),
    "staff_access.decide": frozenset({Role.OWNER, Role.ADMIN}),
    "staff_access.policy": frozenset({Role.OWNER}),
    # GDPR requests: auditors read them and their receipts; owners and admins open, run and cancel
    # them and download exports. Never part of a staff access grant.
    "privacy.view": frozenset({Role.OWNER, Role.ADMIN, Role.AUDITOR}),
    "privacy.manage": frozenset({Role.OWNER, Role.ADMIN}),
}


def role_allows(role: str, permission: str) -> bool:
    """Return whether `role` holds `permission`; unknown permissions are denied."""
    return role in PERMISSIONS.get(permission, frozenset())
