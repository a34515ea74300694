"""The licensing service's report endpoint: signatures, replays, deduplication, what it stores."""

from __future__ import annotations

import gzip
import json
import time
import uuid

import pytest
from django.test import Client

from licensing import payload as payload_format
from licensing import selectors, services
from licensing.models import ReceivedReport, RegisteredPortal
from licensing.services_receiver import portal_register
from tenants.audit import SYSTEM
from tests.licensing.conftest import signed_post

pytestmark = pytest.mark.django_db

REPORTS = "/licensing/v1/reports/"
ERASURES = "/licensing/v1/erasures/"


@pytest.fixture
def report_json(small_fleet, licence) -> bytes:
    report, _ = services.usage_report_create()
    return selectors.usage_report_json(report=report)


def post(body: bytes, licence, **options):
    return signed_post(
        Client(), options.pop("path", REPORTS), body, serial=licence.serial, key=licence.licence_key, **options
    )


def test_it_stores_a_signed_report_and_answers_with_a_receipt(report_json, licence):
    key = str(uuid.uuid4())

    response = post(report_json, licence, idempotency_key=key, gzip_body=True)

    assert response.status_code == 201, response.content
    receipt = response.json()
    stored = ReceivedReport.objects.get()
    assert receipt["receipt_id"] == str(stored.receipt_id) and receipt["idempotency_key"] == key
    assert receipt["duplicate"] is False
    assert receipt["sha256"] == stored.sha256 == payload_format.hashlib.sha256(report_json).hexdigest()
    assert json.loads(payload_format.decompress(bytes(stored.body), limit=10**7)) == json.loads(report_json)
    assert stored.devices == 4 and stored.devices_with_protected_items == 3
    assert stored.boosters == {"files": 3, "hyperv": 1, "mssql": 1, "vmware": 1}
    portal = RegisteredPortal.objects.get(serial=licence.serial)
    assert portal.last_report_at == stored.received_at


def test_it_keeps_the_portal_address_it_sees_and_ignores_a_forwarded_one_from_a_stranger(report_json, licence):
    response = signed_post(
        Client(REMOTE_ADDR="192.0.2.44"),
        REPORTS,
        report_json,
        serial=licence.serial,
        key=licence.licence_key,
        gzip_body=True,
        extra={"X-Forwarded-For": "203.0.113.9"},
    )

    assert response.status_code == 201
    assert response.json()["portal_ip"] == "192.0.2.44"
    assert ReceivedReport.objects.get().source_ip == "192.0.2.44"
    assert RegisteredPortal.objects.get(serial=licence.serial).last_seen_ip == "192.0.2.44"


def test_it_answers_a_repeated_key_with_the_first_receipt_and_stores_once(report_json, licence):
    key = str(uuid.uuid4())
    first = post(report_json, licence, idempotency_key=key, gzip_body=True)
    # The same request again within the replay window (a replay, or a retry after a lost answer).
    again = post(report_json, licence, idempotency_key=key, gzip_body=True)

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == {**first.json(), "duplicate": True}
    assert ReceivedReport.objects.count() == 1


def test_it_refuses_a_second_report_for_a_period_it_has(report_json, licence):
    assert post(report_json, licence, gzip_body=True).status_code == 201

    response = post(report_json, licence, idempotency_key=str(uuid.uuid4()), gzip_body=True)

    assert response.status_code == 409 and response.json()["error"] == "period_taken"
    assert ReceivedReport.objects.count() == 1


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"key": "a-different-key-of-some-length-000000"}, "bad_signature"),
        ({"serial": "portal-unknown"}, "bad_signature"),
        ({"sign_path": ERASURES}, "bad_signature"),
        ({"now": -360}, "stale"),
        ({"now": +360}, "stale"),
    ],
)
def test_it_refuses_a_bad_signature_or_a_stale_request(report_json, licence, change, code):
    options = {"serial": licence.serial, "key": licence.licence_key, **change}
    if "now" in options:  # seconds from now, read when the test runs
        options["now"] = time.time() + options["now"]
    response = signed_post(Client(), REPORTS, report_json, gzip_body=True, **options)

    assert response.status_code == 401, response.content
    assert response.json()["error"] == code
    assert not ReceivedReport.objects.exists()


def test_it_refuses_a_body_or_key_changed_after_signing(report_json, licence):
    from licensing.signing import IDEMPOTENCY_HEADER, signed_headers

    wire = gzip.compress(report_json, mtime=0)
    headers = signed_headers(
        key=licence.licence_key, serial=licence.serial, method="POST", path=REPORTS, body=wire, idempotency_key="k"
    )
    tampered_body = gzip.compress(report_json.replace(b"alice-laptop", b"alice-laptoq"), mtime=0)
    for body, extra in ((tampered_body, {}), (wire, {IDEMPOTENCY_HEADER: str(uuid.uuid4())})):
        response = Client().generic(
            "POST",
            REPORTS,
            data=body,
            content_type="application/json",
            headers={**headers, **extra, "Content-Encoding": "gzip"},
        )
        assert response.status_code == 401 and response.json()["error"] == "bad_signature"
    assert not ReceivedReport.objects.exists()


def test_it_refuses_an_unsigned_request_and_other_methods(report_json):
    assert Client().post(REPORTS, data=report_json, content_type="application/json").status_code == 401
    assert Client().get(REPORTS).status_code == 405
    assert not ReceivedReport.objects.exists()


def test_it_refuses_a_portal_whose_licence_is_not_active(report_json, licence):
    RegisteredPortal.objects.filter(serial=licence.serial).update(is_active=False)

    response = post(report_json, licence, gzip_body=True)

    assert response.status_code == 403 and response.json()["error"] == "portal_inactive"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda report: report["tenants"][0]["devices"][0].update(timezone="Europe/Berlin"),
        lambda report: report["tenants"][0].update(slug="acme"),
        lambda report: report["portal"].update(ip="192.0.2.1"),
        lambda report: report["portal"]["features"].update(vault_bytes=1),
        lambda report: report.update(extra=[]),
        lambda report: report["tenants"][0]["devices"][0]["boosters"].append("C:\\Users"),
    ],
)
def test_it_refuses_and_does_not_store_a_report_outside_the_allow_list(report_json, licence, mutate):
    report = json.loads(report_json)
    mutate(report)

    response = post(json.dumps(report).encode(), licence, gzip_body=True)

    assert response.status_code == 422 and response.json()["error"] == "invalid_report"
    assert not ReceivedReport.objects.exists()


def test_it_refuses_a_report_naming_another_portal(report_json, licence):
    other = portal_register(actor=SYSTEM, name="other")

    response = signed_post(
        Client(), REPORTS, report_json, serial=other.portal.serial, key=other.licence_key, gzip_body=True
    )

    assert response.status_code == 422 and "serial" in response.json()["detail"]


def test_it_refuses_a_compressed_bomb(licence, settings, monkeypatch):
    from licensing import conf

    monkeypatch.setattr(conf, "MAX_PAYLOAD_BYTES", 1024 * 1024)
    bomb = b"[" + b" " * (4 * 1024 * 1024) + b"]"

    response = post(bomb, licence, gzip_body=True)

    assert response.status_code == 413 and response.json()["error"] == "too_large"


def test_it_accepts_a_plain_json_body(report_json, licence):
    response = post(report_json, licence)

    assert response.status_code == 201
    assert json.loads(payload_format.decompress(bytes(ReceivedReport.objects.get().body), limit=10**7)) == json.loads(
        report_json
    )


def test_it_is_not_there_when_this_installation_is_only_a_portal(report_json, licence, settings):
    settings.LICENSING_ROLE = "portal"

    response = post(report_json, licence, gzip_body=True)

    assert response.status_code == 404


def test_it_accepts_a_request_from_a_clock_a_little_off(report_json, licence):
    response = post(report_json, licence, gzip_body=True, now=time.time() - 240)

    assert response.status_code == 201
