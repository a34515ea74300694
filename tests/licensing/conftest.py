"""Fixtures for licensing: inventory builders, the licensing service under a live server, and a
front for it on 127.0.0.1 that can refuse, fail or time out the way a real service outage does.

The suite runs in the embedded "both" role: the portal's licence is made, and registered with the
service in the same database, the first time it is needed.
"""

from __future__ import annotations

import gzip
import itertools
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.test import Client

from devices.models import BackupAccount, Device, ProtectedItem, StorageVault
from licensing import services
from licensing.signing import signed_headers
from portal.celery import app as celery_app

_numbers = itertools.count(1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_account(tenant, username: str, **fields) -> BackupAccount:
    fields.setdefault("login_verifier", "$2b$04$" + uuid.uuid4().hex * 2)
    return BackupAccount.objects.create(tenant=tenant, username=username, **fields)


def make_device(account: BackupAccount, name: str, *, engines=(), item_names=None, **fields) -> Device:
    """A device of `account` with one protected item per engine (named from item_names if given)."""
    number = next(_numbers)
    device = Device.objects.create(
        tenant=account.tenant,
        account=account,
        device_id=f"device-{number:08d}",
        name=name,
        token_hash=uuid.uuid4().hex * 2,
        **fields,
    )
    names = list(item_names or [])
    for index, engine in enumerate(engines):
        ProtectedItem.objects.create(
            tenant=account.tenant,
            device=device,
            item_id=f"item-{index}",
            name=names[index] if index < len(names) else f"Item {index}",
            engine=engine,
            size_bytes=1000 * (index + 1),
        )
    return device


def make_vault(account: BackupAccount, name: str, **fields) -> StorageVault:
    return StorageVault.objects.create(
        tenant=account.tenant, account=account, vault_id=f"vault-{next(_numbers)}", name=name, **fields
    )


@pytest.fixture(autouse=True, scope="session")
def _tasks_go_to_an_in_memory_broker():
    """A stored report enqueues its sender after commit: in these tests to kombu's in-memory
    transport, not to the filesystem folders or the Redis database of the environment."""
    previous = celery_app.conf.broker_url, celery_app.conf.broker_transport_options
    celery_app.conf.broker_url, celery_app.conf.broker_transport_options = "memory://", {}
    yield
    celery_app.conf.broker_url, celery_app.conf.broker_transport_options = previous


@pytest.fixture
def licence(db):
    return services.licence_current()


@pytest.fixture
def small_fleet(acme, globex):
    """Two tenants' worth of inventory: acme has two accounts and three devices, globex one of each."""
    alice = make_account(acme.tenant, "alice")
    bob = make_account(acme.tenant, "bob")
    make_device(alice, "alice-laptop", engines=["files", "mssql"])
    make_device(alice, "alice-desktop", engines=["files"])
    make_device(bob, "bob-nas")
    carol = make_account(globex.tenant, "carol")
    make_device(carol, "carol-server", engines=["hyperv", "vmware", "files"])
    return {"alice": alice, "bob": bob, "carol": carol}


def signed_post(
    client: Client,
    path: str,
    body: bytes,
    *,
    serial: str,
    key: str,
    idempotency_key: str | None = None,
    now: float | None = None,
    gzip_body: bool = False,
    sign_path: str | None = None,
    extra: dict[str, str] | None = None,
):
    """POST to the service with the headers a portal sends (sign_path: sign another path than the one used)."""
    wire = gzip.compress(body, mtime=0) if gzip_body else body
    headers = signed_headers(
        key=key,
        serial=serial,
        method="POST",
        path=sign_path or path,
        body=wire,
        idempotency_key=idempotency_key or str(uuid.uuid4()),
        now=now,
    )
    if gzip_body:
        headers["Content-Encoding"] = "gzip"
    headers.update(extra or {})
    return client.generic("POST", path, data=wire, content_type="application/json", headers=headers)


class ServiceFront:
    """An HTTP server on 127.0.0.1 standing between the portal and the licensing service.

    Modes: "up" forwards to the service; "error" answers 500; "slow" forwards (so the service
    stores the report) and answers only after the portal has given up; "refuse" closes the
    listening socket, so connections are refused. `requests` counts what reached it.
    `forwarded_for` is sent on as X-Forwarded-For: the address the service sees the portal at
    across a network (the service must then trust 127.0.0.1 as a proxy).
    """

    def __init__(self, upstream: str, delay: float, forwarded_for: str = "") -> None:
        self.upstream = upstream.rstrip("/")
        self.delay = delay
        self.forwarded_for = forwarded_for
        self.mode = "up"
        self.requests = 0
        self.port = free_port()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _handler(self):
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                front.requests += 1
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if front.mode == "error":
                    self._answer(500, b"<h1>Internal Server Error</h1>", "text/html")
                    return
                headers = {name: value for name, value in self.headers.items() if name.lower() != "host"}
                if front.forwarded_for:
                    headers["X-Forwarded-For"] = front.forwarded_for
                request = urllib.request.Request(front.upstream + self.path, data=body, headers=headers, method="POST")
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        status, answer = response.status, response.read()
                except urllib.error.HTTPError as error:
                    status, answer = error.code, error.read()
                if front.mode == "slow":
                    time.sleep(front.delay)
                self._answer(status, answer, "application/json")

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the portal stopped waiting

        return Handler

    def _start(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def set(self, mode: str) -> None:
        if mode == "refuse":
            self._stop()
        elif self._server is None:
            self._start()
        self.mode = mode

    def close(self) -> None:
        self._stop()


@pytest.fixture
def service(live_server, settings):
    """The licensing service itself, under a live server, as the portal's destination."""
    settings.LICENSING_SERVICE_URL = live_server.url + "/licensing/"
    return live_server


@pytest.fixture
def front(live_server, settings) -> Iterator[ServiceFront]:
    """A ServiceFront before the live licensing service; the portal times out after 1 s."""
    settings.LICENSING_TIMEOUT_SECONDS = 1
    front = ServiceFront(live_server.url, delay=1.5)
    settings.LICENSING_SERVICE_URL = front.url + "/licensing/"
    yield front
    front.close()
