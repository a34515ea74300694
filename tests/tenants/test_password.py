from __future__ import annotations

from django.test import Client

from tenants.models import AuditEvent
from tests.conftest import PASSWORD

NEW_PASSWORD = "an entirely new passphrase"


def change(client: Client, old: str = PASSWORD, new: str = NEW_PASSWORD, again: str | None = None):
    return client.post("/account/password/", {"old_password": old, "new_password1": new, "new_password2": again or new})


def test_it_needs_login(db):
    assert Client().get("/account/password/")["Location"].startswith("/login/")


def test_it_changes_the_password_and_keeps_the_session(acme, as_user):
    client = as_user(acme.admin)
    assert client.get("/account/password/").status_code == 200
    response = change(client)
    assert response.status_code == 302 and response["Location"] == "/account/password/"

    acme.admin.refresh_from_db()
    assert acme.admin.check_password(NEW_PASSWORD)
    assert client.session["_auth_user_id"] == str(acme.admin.pk)
    assert client.get("/account/password/").status_code == 200  # still signed in
    assert AuditEvent.objects.get(action="account.password_changed").tenant == acme.tenant


def test_it_refuses_the_old_password_afterwards(acme, as_user):
    change(as_user(acme.admin))
    old = Client()
    old.post("/login/", {"username": "acme-admin", "password": PASSWORD})
    assert "_auth_user_id" not in old.session
    new = Client()
    new.post("/login/", {"username": "acme-admin", "password": NEW_PASSWORD})
    assert new.session["_auth_user_id"] == str(acme.admin.pk)


def test_it_signs_out_other_sessions(acme, as_user):
    other = as_user(acme.admin)
    change(as_user(acme.admin))
    assert other.get("/account/password/")["Location"].startswith("/login/")


def test_it_checks_the_current_password_and_the_new_ones(acme, as_user):
    client = as_user(acme.admin)
    assert b"incorrectly" in change(client, old="wrong").content
    assert b"didn" in change(client, again="something else").content
    assert b"too short" in change(client, new="short").content
    acme.admin.refresh_from_db()
    assert acme.admin.check_password(PASSWORD)
    assert not AuditEvent.objects.filter(action="account.password_changed").exists()
