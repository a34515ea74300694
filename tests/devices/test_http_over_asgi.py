"""HTTP through the ASGI application the servers run (portal/asgi.py): Django's WSGI handler on a
fixed pool of threads, with the process's outbox started on the server's event loop."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import threading

import pytest
from asgiref.testing import ApplicationCommunicator
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.signals import request_started
from django.test import Client

from devices.models import Command
from portal import http as http_module
from portal.asgi import application
from portal.outbox import GROUPS, outbox
from tenants import services as tenant_services
from tenants.audit import SYSTEM, audit_group_name
from tenants.models import AuditEvent

from .conftest import db

pytestmark = pytest.mark.django_db(transaction=True)


async def http(method: str, path: str, *, body_parts: tuple[bytes, ...] = (b"",), headers=()) -> tuple[int, bytes]:
    """One request through the ASGI application, its body sent in `body_parts`; (status, body)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    communicator = ApplicationCommunicator(application, scope)
    for number, part in enumerate(body_parts):
        more = number < len(body_parts) - 1
        await communicator.send_input({"type": "http.request", "body": part, "more_body": more})
    start = await communicator.receive_output(timeout=10)
    assert start["type"] == "http.response.start"
    body = b""
    while True:
        message = await communicator.receive_output(timeout=10)
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await communicator.wait(timeout=10)
    return start["status"], body


@pytest.fixture
def api_key_header(acme) -> bytes:
    """The Authorization header's value for an API key of acme's owner."""
    raw_key = tenant_services.api_key_create(actor=SYSTEM, tenant=acme.tenant, user=acme.owner, name="asgi").raw_key
    return f"Bearer {raw_key}".encode()


async def test_requests_are_served_by_a_fixed_pool_of_threads():
    served_by: list[threading.Thread] = []

    def note_thread(**kwargs) -> None:
        served_by.append(threading.current_thread())

    request_started.connect(note_thread)
    try:
        for _ in range(3 * settings.HTTP_THREADS):
            status, body = await http("GET", "/login/")
            assert status == 200 and b"password" in body
    finally:
        request_started.disconnect(note_thread)

    assert len(served_by) == 3 * settings.HTTP_THREADS
    # Django's ASGI handler started a thread for every request.
    assert len(set(served_by)) <= settings.HTTP_THREADS
    assert threading.main_thread() not in served_by


async def test_a_command_posted_in_parts_is_stored_and_its_audit_event_pushed_through_the_outbox(
    acme, registration, api_key_header
):
    layer = get_channel_layer()
    audit_stream = await layer.new_channel()
    await layer.group_add(audit_group_name(acme.tenant.pk), audit_stream)
    body = json.dumps({"kind": "ping"}).encode()

    status, answer = await http(
        "POST",
        f"/api/v1/t/acme/devices/{registration.device.pk}/commands/",
        body_parts=(body[:5], body[5:]),
        headers=[
            (b"authorization", api_key_header),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    )

    assert status == 202, answer
    command = await db(Command.objects.get)(pk=json.loads(answer)["id"])
    assert (command.kind, command.status) == ("ping", "queued")
    pushed = await layer.receive(audit_stream)
    assert pushed["type"] == "audit.event"
    assert (pushed["event"]["action"], pushed["event"]["target_id"]) == ("command.issued", str(command.pk))
    # The request started the process's outbox on this loop: a thread's send is handed to it.
    note = {"type": "audit.event", "event": {"action": "note"}}
    assert await asyncio.to_thread(outbox.put, GROUPS, audit_group_name(acme.tenant.pk), note)
    assert await layer.receive(audit_stream) == note


async def test_a_body_without_a_length_is_read_whole_and_one_past_the_limit_refused(
    acme, registration, api_key_header, monkeypatch
):
    headers = [(b"authorization", api_key_header), (b"content-type", b"application/json")]
    path = f"/api/v1/t/acme/devices/{registration.device.pk}/commands/"
    body = json.dumps({"kind": "ping"}).encode()

    # No Content-Length (a chunked upload): Django's WSGI handler alone would see an empty body.
    status, answer = await http("POST", path, body_parts=(body[:3], body[3:]), headers=headers)
    assert status == 202, answer

    monkeypatch.setattr(http_module, "MAX_UNSIZED_BODY_BYTES", len(body) - 1)
    status, answer = await http("POST", path, body_parts=(body[:3], body[3:]), headers=headers)
    assert status == 413 and b"Content-Length" in answer
    assert await db(Command.objects.count)() == 1


async def test_a_body_past_the_read_ahead_is_read_by_the_requests_thread(acme, registration, api_key_header):
    padding = "x" * (http_module.READ_AHEAD_BYTES + 10)
    body = json.dumps({"kind": "ping", "parameters": {"note": padding}}).encode()
    headers = [
        (b"authorization", api_key_header),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    parts = (body[:1000], body[1000:40000], body[40000:])

    status, answer = await http(
        "POST", f"/api/v1/t/acme/devices/{registration.device.pk}/commands/", body_parts=parts, headers=headers
    )

    # Parsed whole (a cut body is a parse error): the view read it, and refused the unknown parameter.
    assert status == 400
    assert json.loads(answer)["error"]["fields"] == {"parameters": {"note": "No command takes this parameter."}}


async def test_a_streaming_answer_arrives_whole(acme, registration):
    def owner_session() -> str:
        client = Client()
        client.force_login(acme.owner)
        return client.cookies[settings.SESSION_COOKIE_NAME].value

    session = await db(owner_session)()
    events = await db(AuditEvent.objects.filter(tenant=acme.tenant).count)()

    status, body = await http(
        "GET", "/t/acme/audit/export.csv", headers=[(b"cookie", f"{settings.SESSION_COOKIE_NAME}={session}".encode())]
    )

    assert status == 200
    rows = list(csv.reader(io.StringIO(body.decode())))
    assert len(rows) == 1 + events and events > 0  # a header, then every event of the tenant
