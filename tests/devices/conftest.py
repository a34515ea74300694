from __future__ import annotations

import contextlib
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from devices import keys, services
from portal.asgi import application
from tenants.audit import SYSTEM

ACCOUNT_PASSWORD = "account-password-1"


@pytest.fixture
def account(acme):
    return services.account_create(actor=SYSTEM, tenant=acme.tenant, username="alice", password=ACCOUNT_PASSWORD)


@pytest.fixture
def l_key_hex(acme):
    l_key, _ = keys.derive_keys("acme", "alice", ACCOUNT_PASSWORD)
    return l_key.hex()


def register(account, l_key_hex, device_id="device-0001", **inventory):
    inventory.setdefault("name", "alice-laptop")
    return services.device_register(
        tenant_slug=account.tenant.slug,
        username=account.username,
        l_key_hex=l_key_hex,
        device_id=device_id,
        inventory=inventory,
        ip_address="198.51.100.7",
    )


@pytest.fixture
def registration(account, l_key_hex):
    return register(account, l_key_hex)


class DeviceSocket:
    """A device's websocket in a test: JSON in, JSON out, with the protocol's envelope."""

    def __init__(self, token: str | None, subprotocols: list[str] | None = None, headers=None) -> None:
        headers = list(headers or [])
        if token and not subprotocols:
            headers.append((b"authorization", f"Device {token}".encode()))
        self.communicator = WebsocketCommunicator(
            application, "/ws/device/", headers=headers, subprotocols=subprotocols
        )

    async def connect(self):
        return await self.communicator.connect()

    async def send(self, message_type: str, **fields):
        await self.communicator.send_to(text_data=json.dumps({"v": 1, "type": message_type, **fields}))

    async def send_raw(self, text: str):
        await self.communicator.send_to(text_data=text)

    async def receive(self, timeout: float = 3):
        return await self.communicator.receive_json_from(timeout=timeout)

    async def receive_close_code(self, timeout: float = 3):
        return (await self.receive_close(timeout))["code"]

    async def receive_close(self, timeout: float = 3) -> dict:
        """The close the portal sent: {"code": ..., "reason": ...}."""
        while True:
            output = await self.communicator.receive_output(timeout=timeout)
            if output["type"] == "websocket.close":
                return {"code": output.get("code"), "reason": output.get("reason", "")}

    async def hello(self, **fields):
        fields.setdefault("name", "alice-laptop")
        fields.setdefault("os", "Linux 6.1")
        fields.setdefault("consents", {"allow_browse": False})
        await self.send("hello", **fields)
        welcome = await self.receive()
        assert welcome["type"] == "welcome"
        return welcome

    async def processed(self):
        """Wait until the portal has handled every frame sent so far: it answers in order, so the
        welcome to a fresh hello comes after all of them."""
        await self.hello()

    async def close(self):
        await self.communicator.disconnect()


@pytest.fixture
async def device_socket():
    sockets: list[DeviceSocket] = []

    def make(token, **kwargs) -> DeviceSocket:
        socket = DeviceSocket(token, **kwargs)
        sockets.append(socket)
        return socket

    yield make
    # End every consumer, closed or not, so that no task outlives the test's event loop.
    for socket in sockets:
        with contextlib.suppress(Exception):  # already ended by the test
            await socket.communicator.disconnect()


def db(function):
    return sync_to_async(function, thread_sensitive=True)
