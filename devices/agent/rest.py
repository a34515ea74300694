"""The REST half of the protocol: registration and the profile (docs/protocol.md, "Registration")."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import json
import logging
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from devices.agent import __version__, profile

TIMEOUT_SECONDS = 30
USER_AGENT = f"backup-agent/{__version__}"

logger = logging.getLogger("devices.agent")
T = TypeVar("T")


class PortalRefused(Exception):
    """The portal answered with a 4xx the agent cannot fix by trying again."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class PortalUnavailable(Exception):
    """The portal could not be reached, or answered 429 or 5xx: try again after a delay."""


def endpoint(server: str, path: str) -> str:
    """Return the URL of `path` under the portal's base URL (which may carry a path prefix)."""
    parts = urlsplit(server)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))


def websocket_url(server: str) -> str:
    """Return ws(s)://.../ws/device/ for an http(s) portal URL."""
    parts = urlsplit(server)
    scheme = {"http": "ws", "https": "wss"}[parts.scheme]
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws/device/", "", ""))


def tls_context(server: str, ca_file: str | None) -> ssl.SSLContext | None:
    """Return the TLS context for an https portal: the system's trust store, or a private CA's file.

    There is deliberately no way to switch verification off: a device token and the login key L
    would be handed to whoever sits in the middle.
    """
    if urlsplit(server).scheme != "https":
        if ca_file:
            logger.warning("--ca-file is ignored: %s does not use https.", server)
        return None
    return ssl.create_default_context(cafile=ca_file)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def in_daemon_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call in a daemon thread, so that a stuck HTTP request cannot hold up exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            result, error = function(*args, **kwargs), None
        except BaseException as raised:  # handed to the awaiting task
            result, error = None, raised
        with contextlib.suppress(RuntimeError):  # the loop closed while the call ran
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="agent-http", daemon=True).start()
    return await future


def _request(
    url: str, *, method: str, body: dict[str, Any] | None, token: str | None, tls: ssl.SSLContext | None
) -> dict[str, Any]:
    headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Device {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310 - http(s) only
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS, context=tls) as response:  # noqa: S310
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        try:
            detail = json.loads(error.read() or b"{}").get("error", {})
        except (ValueError, AttributeError):
            detail = {}
        if error.code == 429 or error.code >= 500:
            raise PortalUnavailable(f"the portal answered {error.code}") from None
        raise PortalRefused(error.code, str(detail.get("code", "")), str(detail.get("message", error.reason))) from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise PortalUnavailable(str(getattr(error, "reason", error))) from None


def register(
    server: str, *, tls: ssl.SSLContext | None, tenant: str, username: str, l_key: bytes, inventory: dict[str, str]
) -> dict[str, Any]:
    """Register this device with L; return the portal's answer, which holds the device token."""
    body = {"tenant": tenant, "username": username, "l_key": l_key.hex(), **inventory}
    return _request(endpoint(server, "/api/device/v1/register/"), method="POST", body=body, token=None, tls=tls)


def fetch_profile(server: str, *, tls: ssl.SSLContext | None, token: str) -> dict[str, Any]:
    """Return the account's profile: {"version", "secrets"} (secrets stay opaque to the server)."""
    return _request(endpoint(server, "/api/device/v1/profile/"), method="GET", body=None, token=token, tls=tls)


def store_profile(
    server: str, *, tls: ssl.SSLContext | None, token: str, version: int, secrets: bytes
) -> dict[str, Any]:
    """Store the sealed profile secrets if `version` is still current (else PortalRefused, 409)."""
    body = {"version": version, "secrets": base64.b64encode(secrets).decode()}
    return _request(endpoint(server, "/api/device/v1/profile/"), method="PUT", body=body, token=token, tls=tls)


def change_password(
    server: str,
    *,
    tls: ssl.SSLContext | None,
    token: str,
    old_l_key: bytes,
    new_l_key: bytes,
    version: int,
    secrets: bytes,
) -> dict[str, Any]:
    """Replace the account's login key and its profile secrets (sealed under the new password) at once."""
    body = {
        "old_l_key": old_l_key.hex(),
        "new_l_key": new_l_key.hex(),
        "version": version,
        "secrets": base64.b64encode(secrets).decode(),
    }
    return _request(endpoint(server, "/api/device/v1/password/"), method="POST", body=body, token=token, tls=tls)


class RemoteProfile:
    """The account's profile secrets on the portal, as devices.agent.profile.ProfileStore wants them."""

    def __init__(self, server: str, *, tls: ssl.SSLContext | None, token: Callable[[], str]) -> None:
        self.server, self.tls, self.token = server, tls, token

    def fetch(self) -> profile.StoredProfile:
        answer = fetch_profile(self.server, tls=self.tls, token=self.token())
        try:
            return profile.StoredProfile(int(answer["version"]), base64.b64decode(answer["secrets"], validate=True))
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise PortalUnavailable("the portal's profile answer is malformed") from None

    def store(self, *, version: int, blob: bytes) -> int:
        try:
            answer = store_profile(self.server, tls=self.tls, token=self.token(), version=version, secrets=blob)
        except PortalRefused as refusal:
            if refusal.status == 409:
                raise profile.ProfileConflict from None
            raise
        return int(answer.get("version", version + 1))
