"""Settings: safe by default, and clean under `check --deploy` with the variables the README lists.

Each test runs Django in a subprocess with a controlled environment, because the settings module is
read once per process and pytest-django forces DEBUG off in this one anyway.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Variables the settings read; each test starts from an environment without any of them.
SETTINGS_VARIABLES = {
    "DEBUG",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "TRUSTED_PROXIES",
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "BEHIND_TLS_PROXY",
    "SECURE_COOKIES",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SECRETS_KEYS",
}

PRODUCTION = {
    # check --deploy does not connect to these; it only needs the settings they switch on.
    "DATABASE_URL": "postgres://portal:secret@db.internal:5432/portal",
    "REDIS_URL": "redis://redis.internal:6379/0",
    "ALLOWED_HOSTS": "backup.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://backup.example.com",
    "TRUSTED_PROXIES": "10.0.0.10",
    "BEHIND_TLS_PROXY": "1",
    "SECURE_SSL_REDIRECT": "1",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "SECURE_HSTS_PRELOAD": "1",
    "SECRETS_KEYS": "k2026=" + base64.b64encode(bytes(range(32))).decode(),
}


def run_django(args: list[str], extra_env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name not in SETTINGS_VARIABLES}
    env.update({"PORTAL_DATA_DIR": str(tmp_path / "data"), "DJANGO_SETTINGS_MODULE": "portal.settings"})
    env.update(extra_env)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


PRINT_SETTINGS = (
    "import django; django.setup(); from django.conf import settings as s; "
    "print(s.DEBUG, s.SESSION_COOKIE_SECURE, s.DATABASES['default']['ENGINE'])"
)


def test_it_keeps_debug_off_by_default(tmp_path):
    result = run_django(["-c", PRINT_SETTINGS], {}, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "django.db.backends.sqlite3"]


def test_it_keeps_the_generated_secret_key_private(tmp_path):
    result = run_django(["-c", "import django; django.setup()"], {}, tmp_path)

    assert result.returncode == 0, result.stderr
    key_file = tmp_path / "data" / "secret_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert len(key_file.read_text().strip()) >= 50


def test_it_passes_the_deploy_checks_with_production_variables(tmp_path):
    production = {**PRODUCTION, "SECRET_KEY": secrets.token_urlsafe(50)}

    result = run_django(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], production, tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_it_turns_secure_cookies_on_in_production(tmp_path):
    production = {**PRODUCTION, "SECRET_KEY": secrets.token_urlsafe(50)}

    result = run_django(["-c", PRINT_SETTINGS], production, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "django.db.backends.postgresql"]


def test_it_fails_the_deploy_checks_without_them(tmp_path):
    result = run_django(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], {}, tmp_path)

    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "tenants.W001"):
        assert warning in result.stderr
