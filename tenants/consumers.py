"""Live updates for tenant admins' browsers.

The tenant is resolved once, on connect, through the same selector and permission table as HTTP
requests; a person who is not a member (or lacks the permission) is refused with close code 4404
or 4403, which says nothing about whether the tenant exists.

Platform staff connect only through a live access grant covering the socket's permission; their
socket joins the grant's group, so revoking or expiring the grant closes it at once (4403).
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.http import Http404
from django.utils import timezone
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.models import Device

from tenants.audit import Actor, audit_group_name
from tenants.net import client_ip
from tenants.selectors import tenant_access_get
from tenants.selectors_access import StaffAccessDenied
from tenants.services_access import grant_group_name, staff_access_denied, staff_access_used

CLOSE_NOT_FOUND = 4404
CLOSE_FORBIDDEN = 4403


def _session_verified(session: Any, user: Any) -> bool:
    """Return whether the browser session passed a second factor (what OTPMiddleware does for HTTP)."""
    persistent_id = session.get(DEVICE_ID_SESSION_KEY) if session is not None else None
    device = Device.from_persistent_id(persistent_id) if persistent_id else None
    return device is not None and device.user_id == user.pk


def _staff_actor(scope: Any) -> Actor:
    client = scope.get("client") or (None, None)
    headers = dict(scope.get("headers") or [])
    forwarded = headers.get(b"x-forwarded-for", b"").decode(errors="replace") or None
    return Actor(
        user=scope.get("user"),
        role="platform_staff",
        ip_address=client_ip(client[0], forwarded),
        user_agent=headers.get(b"user-agent", b"").decode(errors="replace")[:300],
    )


@database_sync_to_async
def _resolve_access(scope: Any, slug: str, permission: str) -> tuple[int, Any, bool] | None:
    """Return (tenant id, grant or None, refused) for the socket's user, or None when nothing is found."""
    user, session, path = scope.get("user"), scope.get("session"), scope.get("path", "")
    try:
        access = tenant_access_get(user=user, slug=slug)
    except StaffAccessDenied as denied:
        staff_access_denied(
            actor=_staff_actor(scope),
            tenant=denied.tenant,
            grant=None,
            path=path,
            method="WEBSOCKET",
            reason="no_grant",
        )
        return None
    except Http404:
        return None
    verified = not access.tenant.require_two_factor or _session_verified(session, user)
    refused = access.tenant.is_suspended or not verified or not access.allows(permission)
    if access.grant is not None:
        if refused:
            staff_access_denied(
                actor=_staff_actor(scope),
                tenant=access.tenant,
                grant=access.grant,
                path=path,
                method="WEBSOCKET",
                reason="not_covered",
            )
        else:
            staff_access_used(actor=_staff_actor(scope), grant=access.grant, path=path, method="WEBSOCKET")
    return access.tenant.pk, access.grant, refused


class TenantSocketConsumer(AsyncJsonWebsocketConsumer):
    """A browser socket inside one tenant: resolves the tenant on connect, then joins its groups.

    Subclasses name the permission they need and the groups to join; every tenant socket of every
    app is checked here, the same way.
    """

    permission = "tenant.view"

    def group_names(self, tenant_id: int) -> list[str]:
        raise NotImplementedError

    async def connect(self) -> None:
        user = self.scope.get("user")
        slug = self.scope["url_route"]["kwargs"]["tenant_slug"]
        authenticated = user is not None and user.is_authenticated
        access = await _resolve_access(self.scope, slug, self.permission) if authenticated else None
        if access is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        tenant_id, grant, refused = access
        if refused:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.tenant_id = tenant_id
        self.joined = list(self.group_names(tenant_id))
        if grant is not None:
            self.joined.append(grant_group_name(grant.pk))
            # Expiry closes the socket on the dot, without waiting for the periodic expiry task.
            seconds = (grant.expires_at - timezone.now()).total_seconds()
            self.expiry = asyncio.get_running_loop().call_later(
                max(seconds, 0), lambda: asyncio.ensure_future(self.close(code=CLOSE_FORBIDDEN))
            )
        for group in self.joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels hops into the database thread before every message to close stale connections
        # (aclose_old_connections): a thread hop for each live event, though these sockets touch
        # the database only on connect, through database_sync_to_async, which closes them itself.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def disconnect(self, code: int) -> None:
        if getattr(self, "expiry", None) is not None:
            self.expiry.cancel()
        for group in getattr(self, "joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # Browsers only listen on these sockets; anything they send is ignored.
        return

    async def grant_closed(self, message: dict[str, Any]) -> None:
        """Close a staff socket at once: its access grant was revoked, completed or has expired."""
        await self.close(code=CLOSE_FORBIDDEN)


class TenantLiveConsumer(TenantSocketConsumer):
    """Stream a tenant's new audit events to admins allowed to read the audit log."""

    permission = "audit.view"

    def group_names(self, tenant_id: int) -> list[str]:
        return [audit_group_name(tenant_id)]

    async def audit_event(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "audit_event", "event": message["event"]})
