"""Secrets at rest (tenants/secrets.py): tokens, keys, rotation, and no plaintext in the raw rows."""

from __future__ import annotations

import base64
import importlib
import logging
import stat

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.core.management import call_command
from django.db import connection
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from devices import services as device_services
from devices.models import StorageVault
from tenants import secrets
from tenants.audit import SYSTEM
from tenants.management.commands import rotate_secrets_key
from tenants.models import AuditEvent, AuthenticatorDevice

MARKER = "SECRET-MARKER-5c1e"


def key_entry(key_id: str, fill: int) -> str:
    return f"{key_id}={base64.b64encode(bytes([fill]) * 32).decode()}"


@pytest.fixture
def key_file(settings, tmp_path):
    """Each test gets its own embedded key file (and no SECRETS_KEYS)."""
    settings.SECRETS_KEYS = ""
    settings.SECRETS_KEY_FILE = str(tmp_path / "secrets_keys")
    return tmp_path / "secrets_keys"


def raw_rows(table: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
        return repr(cursor.fetchall())


# --- Tokens ---------------------------------------------------------------------------------


def test_it_matches_a_published_aes_256_gcm_vector():
    # McGrew and Viega, "The Galois/Counter Mode of Operation", test case 14 (also in NIST's GCM vectors).
    sealed = AESGCM(bytes(32)).encrypt(bytes(12), bytes(16), None)
    assert sealed.hex() == "cea7403d4d606b6e074ec5d3baf39d18" + "d0d1c8a799996bf0265b98b5d48ab919"


def test_it_round_trips_with_the_key_id_in_the_token(key_file):
    token = secrets.secret_encrypt(MARKER.encode())
    key_id = secrets.keyring().current_id
    assert token.startswith(f"enc1:{key_id}:") and MARKER not in token
    assert secrets.token_key_id(token) == key_id
    assert secrets.secret_decrypt(token) == MARKER.encode()
    assert secrets.secret_encrypt(b"same") != secrets.secret_encrypt(b"same")  # a fresh nonce each time


def test_it_refuses_a_token_with_another_context_key_id_or_any_changed_character(key_file, settings):
    token = secrets.secret_encrypt(b"seed", context=b"tenants.authenticatordevice.key")
    with pytest.raises(secrets.SecretDecryptionError):
        secrets.secret_decrypt(token, context=b"devices.storagevault.credentials")
    settings.SECRETS_KEYS = ",".join([key_entry("a", 1), key_entry("b", 1)])  # same key bytes, other ids
    token = secrets.secret_encrypt(b"seed")
    with pytest.raises(secrets.SecretDecryptionError):
        secrets.secret_decrypt(token.replace("enc1:a:", "enc1:b:"))  # the key id is authenticated too
    body = token.rsplit(":", 1)[1]
    for position in range(0, len(body), 7):
        changed = body[:position] + ("A" if body[position] != "A" else "B") + body[position + 1 :]
        with pytest.raises(secrets.SecretDecryptionError):
            secrets.secret_decrypt(f"enc1:a:{changed}")


def test_it_names_an_unknown_key_without_saying_anything_secret(key_file, settings):
    settings.SECRETS_KEYS = key_entry("old", 1)
    token = secrets.secret_encrypt(MARKER.encode())
    settings.SECRETS_KEYS = key_entry("new", 2)
    with pytest.raises(secrets.SecretDecryptionError, match="No key old") as raised:
        secrets.secret_decrypt(token)
    assert MARKER not in str(raised.value)


@pytest.mark.parametrize(
    "configured",
    ["nokey", "id=" + base64.b64encode(b"short").decode(), "bad id!=" + base64.b64encode(bytes(32)).decode(), ","],
)
def test_it_refuses_malformed_keys(configured, settings):
    settings.SECRETS_KEYS = configured
    with pytest.raises(secrets.SecretsConfigurationError):
        secrets.keyring()
    from tenants.checks import secrets_keys_parse

    assert [error.id for error in secrets_keys_parse(None)] == ["tenants.E001"]


def test_it_generates_a_private_key_file_once_and_says_so(key_file, caplog):
    with caplog.at_level(logging.WARNING, logger="tenants.secrets"):
        token = secrets.secret_encrypt(b"x")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert f"Generated the key for secrets at rest in {key_file}" in caplog.text
    content = key_file.read_text()
    secrets.secret_encrypt(b"y")
    assert key_file.read_text() == content and secrets.secret_decrypt(token) == b"x"
    assert "generated" not in secrets.keyring_describe() and str(key_file) in secrets.keyring_describe()


def test_it_decrypts_with_every_key_and_encrypts_with_the_first(settings):
    settings.SECRETS_KEYS = key_entry("old", 1)
    old_token = secrets.secret_encrypt(b"old value")
    settings.SECRETS_KEYS = ",".join([key_entry("new", 2), key_entry("old", 1)])
    assert secrets.secret_decrypt(old_token) == b"old value"
    assert secrets.token_key_id(secrets.secret_encrypt(b"v")) == "new"


# --- Fields and raw rows --------------------------------------------------------------------


def test_it_keeps_totp_seeds_out_of_the_raw_table(key_file, acme):
    device = AuthenticatorDevice.objects.create(user=acme.owner, name="Authenticator app", confirmed=True)
    seed = device.key
    assert len(seed) == 40
    raw = raw_rows("tenants_authenticatordevice")
    assert seed not in raw and seed.upper() not in raw and "enc1:" in raw
    assert raw_rows("otp_totp_totpdevice") == "[]"
    again = AuthenticatorDevice.objects.get(pk=device.pk)
    assert again.key == seed
    code = totp(again.bin_key, step=again.step, t0=again.t0, digits=again.digits)
    assert again.verify_token(f"{code:06d}")


def test_it_moved_django_otp_seeds_over_and_encrypted_them(key_file, acme):
    from django.apps import apps

    migration = importlib.import_module("tenants.migrations.0010_move_totp_seeds")
    legacy = TOTPDevice.objects.create(user=acme.admin, name="Authenticator app", confirmed=True)
    seed = legacy.key
    migration.move_seeds(apps, None)
    assert not TOTPDevice.objects.exists()
    moved = AuthenticatorDevice.objects.get(user=acme.admin)
    assert moved.key == seed and moved.confirmed and seed not in raw_rows("tenants_authenticatordevice")


def test_it_keeps_vault_credentials_encrypted_and_never_shows_them(key_file, acme, as_user):
    account = device_services.account_create(actor=SYSTEM, tenant=acme.tenant, username="alice", password="pw-1234567")
    vault = StorageVault.objects.create(tenant=acme.tenant, account=account, vault_id="s3-vault", name="S3")
    url = f"/api/v1/t/acme/accounts/{account.pk}/vaults/s3-vault/credentials/"
    body = {"credentials": {"access_key_id": "AKIA-EXAMPLE", "secret_access_key": MARKER}}
    response = as_user(acme.admin).put(url, body, content_type="application/json")
    assert response.status_code == 204, response.content
    assert MARKER not in raw_rows("devices_storagevault")
    vault.refresh_from_db()
    assert MARKER in vault.credentials
    listed = as_user(acme.auditor).get(f"/api/v1/t/acme/accounts/{account.pk}/vaults/")
    assert listed.status_code == 200 and MARKER not in listed.content.decode()
    assert listed.json()["results"][0]["has_credentials"] is True
    event = AuditEvent.objects.get(action="vault.credentials_set")
    assert event.after == {"vault_id": "s3-vault", "fields": ["access_key_id", "secret_access_key"]}
    assert MARKER not in raw_rows("tenants_auditevent")
    assert as_user(acme.technician).put(url, body, content_type="application/json").status_code == 403
    other = as_user(acme.admin).put(
        f"/api/v1/t/acme/accounts/{account.pk}/vaults/no-such-vault/credentials/", body, content_type="application/json"
    )
    assert other.status_code == 404


@pytest.mark.django_db
def test_it_keeps_both_sides_licence_keys_encrypted_and_encrypts_the_stored_ones(key_file):
    from django.apps import apps

    from licensing import services as licensing_services
    from licensing.models import PortalLicence
    from licensing.models_service import RegisteredPortal

    licence = licensing_services.licence_configure(serial="LIC-1", licence_key=MARKER)
    portal = RegisteredPortal.objects.create(serial="LIC-2", licence_key=MARKER + "-service", name="Portal")
    for table in ("licensing_portallicence", "licensing_registeredportal"):
        assert MARKER not in raw_rows(table) and "enc1:" in raw_rows(table)
    assert PortalLicence.objects.get(pk=licence.pk).licence_key == MARKER
    assert RegisteredPortal.objects.get(pk=portal.pk).licence_key == MARKER + "-service"

    # Rows written before the field was encrypted hold the key in the clear: the migration seals them.
    with connection.cursor() as cursor:
        cursor.execute("UPDATE licensing_portallicence SET licence_key = %s", [MARKER])
    assert MARKER in raw_rows("licensing_portallicence")
    migration = importlib.import_module("licensing.migrations.0003_encrypt_licence_keys")
    migration.encrypt_keys(apps, connection.schema_editor())
    migration.encrypt_keys(apps, connection.schema_editor())  # a second run leaves the tokens alone
    assert MARKER not in raw_rows("licensing_portallicence")
    assert PortalLicence.objects.get(pk=licence.pk).licence_key == MARKER


def test_it_dumps_the_token_and_loads_it_back(key_file, acme):
    from django.core import serializers

    device = AuthenticatorDevice.objects.create(user=acme.owner, name="app", confirmed=True)
    dumped = serializers.serialize("json", AuthenticatorDevice.objects.filter(pk=device.pk))
    assert device.key not in dumped and "enc1:" in dumped
    (loaded,) = serializers.deserialize("json", dumped)
    assert loaded.object.key == device.key


# --- Rotation -------------------------------------------------------------------------------


def test_it_rotates_the_key_file_and_reencrypts_every_secret(key_file, acme, capsys):
    devices = [AuthenticatorDevice.objects.create(user=user, name="app") for user in (acme.owner, acme.admin)]
    old_id = secrets.keyring().current_id
    assert old_id in raw_rows("tenants_authenticatordevice")

    call_command("rotate_secrets_key")

    new_id = secrets.keyring().current_id
    assert new_id != old_id and len(secrets.keyring().keys) == 2
    raw = raw_rows("tenants_authenticatordevice")
    assert f"enc1:{new_id}:" in raw and f"enc1:{old_id}:" not in raw
    assert "tenants.AuthenticatorDevice.key: re-encrypted 2 values" in capsys.readouterr().out
    assert [AuthenticatorDevice.objects.get(pk=device.pk).key for device in devices] == [d.key for d in devices]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    call_command("rotate_secrets_key", "--retire")
    assert [key_id for key_id, _ in secrets.keyring().keys] == [new_id]


def test_it_never_overwrites_a_value_written_during_the_rotation(key_file, acme, settings):
    device = AuthenticatorDevice.objects.create(user=acme.owner, name="app")
    settings.SECRETS_KEYS = ",".join([key_entry("new", 2), *key_file.read_text().split("\n")[2:3]])
    written_meanwhile = secrets.secret_encrypt(b"ab" * 20, context=b"tenants.authenticatordevice.key")
    original_tokens = rotate_secrets_key._tokens

    def tokens_then_a_write(model, field):
        for pk, token in original_tokens(model, field):
            # The portal saves a new seed between the command's read and its write.
            with connection.cursor() as cursor:
                cursor.execute(
                    f"UPDATE tenants_authenticatordevice SET {connection.ops.quote_name('key')} = %s WHERE id = %s",
                    [written_meanwhile, pk],
                )
            yield pk, token

    rotate_secrets_key._tokens = tokens_then_a_write
    try:
        counts = rotate_secrets_key.reencrypt()
    finally:
        rotate_secrets_key._tokens = original_tokens
    assert counts["tenants.AuthenticatorDevice.key"] == 0
    assert AuthenticatorDevice.objects.get(pk=device.pk).key == "ab" * 20


def test_it_explains_how_to_rotate_keys_from_the_environment(settings):
    settings.SECRETS_KEYS = key_entry("one", 1)
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--generate"):
        call_command("rotate_secrets_key")
