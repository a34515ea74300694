from typing import Any

from django.http import HttpRequest

from tenants.roles import PERMISSIONS


def tenant(request: HttpRequest) -> dict[str, Any]:
    """Expose the current tenant, the admin's role and what that role may do to templates."""
    membership = getattr(request, "membership", None)
    allowed = {name for name, roles in PERMISSIONS.items() if membership and membership.role in roles}
    return {
        "current_tenant": getattr(request, "tenant", None),
        "current_membership": membership,
        "can": {name.replace(".", "_"): True for name in allowed},
    }
