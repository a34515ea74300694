"""The tamper-evident audit log: every row linked, digests signed outside the database, and any
edit, deletion or insertion made directly in the database found by verify_audit."""

from __future__ import annotations

import datetime
import hashlib
import json
import threading
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.utils import timezone

from tenants.audit import SYSTEM, Actor, audit_record
from tenants.audit_chain import GENESIS, chain_verify, chains_verify, digests_sign
from tenants.models import AuditChainHead, AuditEvent


@pytest.fixture(autouse=True)
def _signing_key(settings, tmp_path):
    settings.AUDIT_SIGNING_KEY = ""
    settings.DATA_DIR = tmp_path
    settings.AUDIT_DIGEST_FILE = str(tmp_path / "digests.jsonl")


def _seed(tenant, count=5):
    return [
        audit_record(actor=SYSTEM, tenant=tenant, action=f"seed.{number}", after={"n": number})
        for number in range(count)
    ]


def _raw(sql, *params):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _digest(salt, name, value):
    compact = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(bytes.fromhex(salt) + name.encode() + b"\x00" + compact.encode()).hexdigest()


@pytest.mark.django_db
def test_it_links_each_row_to_the_one_before_with_the_documented_encoding(acme):
    first, second = _seed(acme.tenant, 2)
    assert (first.sequence, second.sequence) == (1, 2)
    assert first.previous_hash == GENESIS and second.previous_hash == first.row_hash
    stored = AuditEvent.objects.get(pk=first.pk)
    # Recomputed here from the stored row with the documented encoding, not with the module's code.
    personal = {"actor_label": "system", "ip_address": None, "user_agent": "", "before": None, "after": {"n": 0}}
    assert set(stored.personal_salts) == set(personal) and stored.hash_version == 2
    digests = {name: _digest(stored.personal_salts[name], name, value) for name, value in personal.items()}
    assert stored.personal_digests == digests
    document = {
        "action": stored.action,
        "actor_id": None,
        "actor_role": "system",
        "chain": f"tenant:{acme.tenant.pk}",
        "created_at": stored.created_at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "hash_version": 2,
        "personal": digests,
        "sequence": 1,
        "target_id": "",
        "target_type": "",
        "tenant_id": acme.tenant.pk,
    }
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert stored.row_hash == hashlib.sha256(bytes(32) + encoded).hexdigest()


@pytest.mark.django_db
def test_it_still_verifies_version_one_rows_written_before_the_personal_digests(acme):
    """Rows written before encoding version 2 hash every field in plain, and keep verifying that way."""
    events = _seed(acme.tenant, 3)
    previous = GENESIS
    for event in AuditEvent.objects.filter(chain=events[0].chain).order_by("sequence"):
        document = {
            "action": event.action, "actor_id": None, "actor_label": event.actor_label, "actor_role": "system",
            "after": event.after, "before": None, "chain": event.chain,
            "created_at": event.created_at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "ip_address": None, "sequence": event.sequence, "target_id": "", "target_type": "",
            "tenant_id": acme.tenant.pk, "user_agent": "",
        }  # fmt: skip
        encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        row_hash = hashlib.sha256(bytes.fromhex(previous) + encoded).hexdigest()
        AuditEvent.objects.filter(pk=event.pk).update(
            hash_version=1, personal_salts={}, personal_digests={}, previous_hash=previous, row_hash=row_hash
        )
        previous = row_hash
    AuditChainHead.objects.filter(chain=events[0].chain).update(head_hash=previous)
    assert chain_verify(events[0].chain).intact
    audit_record(actor=SYSTEM, tenant=acme.tenant, action="after.upgrade", after={"n": 9})
    assert chain_verify(events[0].chain).intact
    _raw("UPDATE tenants_auditevent SET actor_label = 'someone' WHERE id = %s", events[1].pk)
    assert chain_verify(events[0].chain).problems == [f"row id {events[1].pk} (sequence 2) was modified"]


@pytest.mark.django_db
def test_it_keeps_verifying_after_personal_fields_are_erased_and_still_finds_tampering(acme):
    from tenants.audit_chain import personal_fields_erase

    events = [
        audit_record(
            actor=Actor(label="device:alice-laptop", role="device", ip_address="192.0.2.55", user_agent="agent/1"),
            tenant=acme.tenant,
            action=f"device.thing.{number}",
            target_type="device",
            target_id=str(number),
            after={"account": "alice", "name": "Alice's laptop"},
        )
        for number in range(4)
    ]
    digests_sign()
    chain = events[0].chain
    stored = list(AuditEvent.objects.filter(pk__in=[events[1].pk, events[2].pk]))
    erased = personal_fields_erase(
        stored,
        replacements={"actor_label": "erased:ts_1", "ip_address": None, "user_agent": "", "after": {"erased": "ts_1"}},
    )
    assert erased == 2
    row = AuditEvent.objects.get(pk=events[1].pk)
    assert row.action == "device.thing.1" and row.after == {"erased": "ts_1"} and row.ip_address is None
    assert set(row.personal_salts) == {"before"} and row.personal_erased_at is not None
    assert chain_verify(chain).intact
    # The erased row cannot be changed unseen: its non-personal fields are still in the hash.
    _raw("UPDATE tenants_auditevent SET action = 'other' WHERE id = %s", events[1].pk)
    assert chain_verify(chain).problems == [f"row id {events[1].pk} (sequence 2) was modified"]
    _raw("UPDATE tenants_auditevent SET action = 'device.thing.1' WHERE id = %s", events[1].pk)
    # Nor can a personal field that still holds its value: its digest gives it away.
    _raw("UPDATE tenants_auditevent SET user_agent = 'forged' WHERE id = %s", events[3].pk)
    assert chain_verify(chain).problems == [f"row id {events[3].pk} (sequence 4) was modified (user_agent)"]
    _raw("UPDATE tenants_auditevent SET user_agent = 'agent/1' WHERE id = %s", events[3].pk)
    assert chain_verify(chain).intact
    # Nor a forged digest for an erased field.
    row = AuditEvent.objects.get(pk=events[2].pk)
    forged = dict(row.personal_digests, actor_label="0" * 64)
    AuditEvent.objects.filter(pk=row.pk).update(personal_digests=forged)
    assert chain_verify(chain).problems == [f"row id {events[2].pk} (sequence 3) was modified"]
    with pytest.raises(ValueError):
        personal_fields_erase(stored, replacements={"action": "x"})


@pytest.mark.django_db
def test_it_keeps_one_chain_per_tenant_and_one_for_the_platform(acme, globex):
    _seed(acme.tenant, 3)
    _seed(globex.tenant, 2)
    audit_record(actor=SYSTEM, tenant=None, action="platform.thing")
    heads = dict(AuditChainHead.objects.values_list("chain", "sequence"))
    assert heads == {f"tenant:{acme.tenant.pk}": 3, f"tenant:{globex.tenant.pk}": 2, "platform": 1}
    assert all(report.intact for report in chains_verify())


@pytest.mark.django_db
def test_it_signs_digests_that_verify_and_exports_them(acme, settings):
    _seed(acme.tenant, 3)
    digests = digests_sign()
    assert [digest.sequence for digest in digests] == [3]
    assert digests_sign() == []  # nothing new, nothing signed
    exported = [json.loads(line) for line in Path(settings.AUDIT_DIGEST_FILE).read_text().splitlines()]
    assert exported[0]["head_hash"] == digests[0].head_hash
    report = chain_verify(f"tenant:{acme.tenant.pk}")
    assert report.intact and report.digests_checked == 1


@pytest.mark.django_db
def test_it_finds_a_modified_row(acme):
    events = _seed(acme.tenant)
    digests_sign()
    _raw("UPDATE tenants_auditevent SET action = 'innocent' WHERE id = %s", events[2].pk)
    report = chain_verify(f"tenant:{acme.tenant.pk}")
    assert report.problems == [f"row id {events[2].pk} (sequence 3) was modified"]


@pytest.mark.django_db
def test_it_finds_a_deleted_row(acme):
    events = _seed(acme.tenant)
    _raw("DELETE FROM tenants_auditevent WHERE id = %s", events[1].pk)
    report = chain_verify(f"tenant:{acme.tenant.pk}")
    assert report.problems[0].startswith(f"row id {events[2].pk}: sequence 3 where 2 was expected")
    assert "deleted" in report.problems[0]


@pytest.mark.django_db
def test_it_finds_rows_deleted_from_the_end_after_a_digest(acme):
    events = _seed(acme.tenant)
    digests_sign()
    _raw("DELETE FROM tenants_auditevent WHERE id IN (%s, %s)", events[3].pk, events[4].pk)
    report = chain_verify(f"tenant:{acme.tenant.pk}")
    assert "rows were deleted from its end" in report.problems[0]


@pytest.mark.django_db
def test_it_finds_an_inserted_row(acme):
    events = _seed(acme.tenant)
    # Make room at sequence 3 and slip a forged row in, relinked as well as an attacker can.
    _raw("UPDATE tenants_auditevent SET sequence = sequence + 100 WHERE chain = %s AND sequence >= 3", events[0].chain)
    forged = AuditEvent(
        tenant=acme.tenant, chain=events[0].chain, sequence=3, actor_label="x", action="forged",
        previous_hash=events[1].row_hash, row_hash="0" * 64, created_at=timezone.now(),
    )  # fmt: skip
    AuditEvent.objects.bulk_create([forged])
    report = chain_verify(f"tenant:{acme.tenant.pk}")
    assert report.problems == [f"row id {forged.pk} (sequence 3) was modified"]


@pytest.mark.django_db
def test_it_finds_a_rewritten_chain_through_the_signed_digest(acme):
    from tenants.audit_chain import link_hash

    events = _seed(acme.tenant)
    digests_sign()
    # Rewrite history and recompute every hash: only the signature outside the database gives it away.
    previous = GENESIS
    for event in AuditEvent.objects.filter(chain=events[0].chain).order_by("sequence"):
        if event.sequence == 2:
            event.action = "rewritten"
        event.previous_hash = previous
        event.row_hash = link_hash(previous, event)
        AuditEvent.objects.filter(pk=event.pk).update(
            action=event.action, previous_hash=event.previous_hash, row_hash=event.row_hash
        )
        previous = event.row_hash
    report = chain_verify(f"tenant:{acme.tenant.pk}")
    assert "differs from the signed digest" in report.problems[0] and "rewritten" in report.problems[0]


@pytest.mark.django_db
def test_it_refuses_a_digest_signed_with_another_key(acme, settings):
    import base64
    import os

    _seed(acme.tenant, 2)
    digests_sign()
    settings.AUDIT_SIGNING_KEY = base64.b64encode(os.urandom(32)).decode()
    report = chain_verify(f"tenant:{acme.tenant.pk}")
    assert report.problems == ["digest at sequence 2 has a bad signature"]


@pytest.mark.django_db
def test_it_fails_the_verify_command_and_names_the_row(acme):
    events = _seed(acme.tenant)
    out = StringIO()
    call_command("verify_audit", stdout=out)
    assert "intact" in out.getvalue()
    _raw("UPDATE tenants_auditevent SET target_id = 'x' WHERE id = %s", events[0].pk)
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("verify_audit", "--tenant", "acme", stdout=out)
    assert f"row id {events[0].pk} (sequence 1) was modified" in out.getvalue()


@pytest.mark.django_db
def test_it_shows_the_verification_to_the_tenant(acme, as_user):
    events = _seed(acme.tenant, 3)
    response = as_user(acme.auditor).get("/t/acme/audit/verify/")
    assert "Intact." in response.content.decode()
    _raw("UPDATE tenants_auditevent SET action = 'x' WHERE id = %s", events[1].pk)
    body = as_user(acme.auditor).get("/t/acme/audit/verify/").content.decode()
    assert "fails verification" in body and f"row id {events[1].pk}" in body
    assert as_user(acme.technician).get("/t/acme/audit/verify/").status_code == 403


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_it_never_forks_a_chain_under_concurrent_writers(acme):
    def write(count):
        try:
            for number in range(count):
                with transaction.atomic():
                    audit_record(actor=SYSTEM, tenant=acme.tenant, action=f"concurrent.{number}")
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(25,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sequences = sorted(AuditEvent.objects.filter(tenant=acme.tenant).values_list("sequence", flat=True))
    assert sequences == list(range(1, 101))
    assert chain_verify(f"tenant:{acme.tenant.pk}").intact
