"""Settings for the portal.

Every setting comes from an environment variable, read here and nowhere else. The defaults are the
*embedded* set-up: SQLite in WAL mode, Channels' in-memory layer and a Celery broker on the local
filesystem, so that one command runs the whole portal on a machine with no services. Production
sets DATABASE_URL (PostgreSQL) and REDIS_URL (channel layer and Celery broker); see README.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


# Where the embedded set-up keeps its database, broker folders and generated secrets.
DATA_DIR = Path(env_str("PORTAL_DATA_DIR", str(BASE_DIR / "var")))


def _embedded_secret_key() -> str:
    """Return a per-installation secret key, generated once and kept in DATA_DIR (mode 0600)."""
    import secrets

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    path = DATA_DIR / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY") or _embedded_secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
# Proxies whose X-Forwarded-For we believe; the client address is read behind them only.
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES")

INSTALLED_APPS = [
    "portal.apps.PortalConfig",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "axes",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "channels",
    "tenants",
    "devices",
    "licensing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    # After authentication, so that a bearer key replaces the session user; CSRF's check runs later.
    "tenants.middleware.ApiKeyMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "tenants.middleware.TenantMiddleware",
    # Last, so that it sees the authenticated user a rejected login attempt left behind.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "portal.urls"
ASGI_APPLICATION = "portal.asgi.application"
# Threads that serve HTTP requests in each server process (portal/http.py): requests beyond them
# wait for a free one. Keep it below DATABASE_POOL_SIZE, which device sockets share.
HTTP_THREADS = env_int("HTTP_THREADS", 8)

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "tenants.context_processors.tenant",
                "licensing.context_processors.usage_reporting",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------

DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    # No persistent connections (one per thread, and a process has the HTTP threads and the
    # loop's pool for device sockets), but Django's psycopg pool: "closing" a connection hands it
    # back. A fresh PostgreSQL connection cost 17.7 ms per database call of a consumer,
    # a pooled one a few (bench/README.md).
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env_int("DATABASE_POOL_SIZE", 10):
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": env_int("DATABASE_POOL_SIZE", 10),
            # Wait this long for a free connection before failing the request.
            "timeout": 10,
        }
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "portal.sqlite3"),
            "OPTIONS": {
                # WAL plus IMMEDIATE transactions: measured to remove "database is locked" errors
                # between beat, the worker and the web process (WAL alone did not).
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: channel layer and Celery broker -------------------------------------------------

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # channels-redis's layer with a send of one round trip instead of four (portal/layers.py).
            "BACKEND": "portal.layers.RedisChannelLayer",
            # socket_timeout above the layer's 5 s blocking read: with redis-py 8 the default
            # timeout equals it and consumers die with TimeoutError (channels_redis#422).
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": 10}],
                # Every device connection of a worker shares one channel (devices.consumers). At
                # the default 100 a bulk command to a few thousand devices, or a busy second, made
                # pushes fail with ChannelFull. Pushes are small hints; a lost one is caught by the
                # worker's undelivered-command sweep.
                "capacity": env_int("CHANNEL_LAYER_CAPACITY", 20000),
            },
        }
    }
else:
    # The same capacity as above: every device connection of the process shares one channel.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": env_int("CHANNEL_LAYER_CAPACITY", 20000)},
        }
    }

# --- Celery ---------------------------------------------------------------------------------

CELERY_BROKER_DIR = DATA_DIR / "celery"
if REDIS_URL:
    CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
else:
    # The filesystem transport needs no server and runs worker and beat as separate processes;
    # its folders must exist before either starts (portal.celery creates them).
    CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://localhost/")
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_DIR / "out"),
        "data_folder_out": str(CELERY_BROKER_DIR / "out"),
        "processed_folder": str(CELERY_BROKER_DIR / "processed"),
        # Without this the transport writes a "control" folder into the working directory.
        "control_folder": str(CELERY_BROKER_DIR / "control"),
        "store_processed": False,
        "polling_interval": 0.1,
    }
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_ACKS_LATE = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Save beat's last-run times at every tick, so a restarted beat does not send a task early.
CELERY_BEAT_SYNC_EVERY = 1
CELERY_TIMEZONE = "UTC"

# --- Audit log ------------------------------------------------------------------------------

# The Ed25519 key that signs audit digests (base64 of 32 random bytes). Keep it out of the database
# and its backups: whoever holds it could sign a rewritten history. Empty: the embedded set-up
# generates one into DATA_DIR/audit_signing_key (mode 0600).
AUDIT_SIGNING_KEY = env_str("AUDIT_SIGNING_KEY")
# Signed digests are also appended here, as JSON lines, for an external copy.
AUDIT_DIGEST_FILE = env_str("AUDIT_DIGEST_FILE", str(DATA_DIR / "audit-digests.jsonl"))

# --- Secrets at rest ------------------------------------------------------------------------

# Keys that encrypt the secrets the portal must hold itself (TOTP seeds, vault credentials...):
# "id=base64 of 32 bytes", comma-separated, the first encrypts and every one decrypts. Empty: the
# embedded set-up generates one into SECRETS_KEY_FILE (mode 0600). See tenants/secrets.py.
SECRETS_KEYS = env_str("SECRETS_KEYS")
SECRETS_KEY_FILE = env_str("SECRETS_KEY_FILE", str(DATA_DIR / "secrets_keys"))

# --- Devices --------------------------------------------------------------------------------

# Seconds between a device's heartbeats; a device silent for three intervals is offline.
DEVICE_HEARTBEAT_INTERVAL = env_int("DEVICE_HEARTBEAT_INTERVAL", 30)

# --- Authentication -------------------------------------------------------------------------

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# Lock a username + address pair out after five failures for fifteen minutes.
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = env_int("AXES_COOLOFF_MINUTES", 15) / 60
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# The client's address as tenants.net reads it: X-Forwarded-For only from TRUSTED_PROXIES.
AXES_CLIENT_IP_CALLABLE = "tenants.net.axes_client_ip"

OTP_TOTP_ISSUER = env_str("OTP_TOTP_ISSUER", "Backup portal")

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", not DEBUG and bool(DATABASE_URL))
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if env_bool("BEHIND_TLS_PROXY", False):
    # TLS ends at the reverse proxy, which must set this header and strip any it receives.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- E-mail ---------------------------------------------------------------------------------

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "portal@localhost")
# The address invitation links point to (scheme and host), e.g. https://backup.example.com
PORTAL_BASE_URL = env_str("PORTAL_BASE_URL", "http://127.0.0.1:8000")

# --- Licensing ------------------------------------------------------------------------------

# Which side of licensing this installation runs: "portal" builds and sends usage reports,
# "service" is the licensing service (receives reports, billing pages), "both" (the embedded
# default) does both and reports to itself over HTTP, so a newcomer sees the whole flow.
LICENSING_ROLE = env_str("LICENSING_ROLE", "both")
# The licensing service's base URL; reports go to <it>v1/reports/. Default: this portal itself.
LICENSING_SERVICE_URL = env_str("LICENSING_SERVICE_URL", PORTAL_BASE_URL.rstrip("/") + "/licensing/")
# Hours without a delivered usage report before every page shows a banner (the portal keeps working).
LICENSING_GRACE_HOURS = env_int("LICENSING_GRACE_HOURS", 72)
# Seconds the portal waits for the service's answer before counting the attempt as failed.
LICENSING_TIMEOUT_SECONDS = env_int("LICENSING_TIMEOUT_SECONDS", 30)

# --- REST API -------------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.api_auth.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "EXCEPTION_HANDLER": "tenants.api_errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "tenants.throttling.ResilientAnonRateThrottle",
        "tenants.throttling.ResilientUserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_str("API_THROTTLE_ANON", "60/min"),
        "user": env_str("API_THROTTLE_USER", "1200/min"),
    },
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Backup portal API",
    "DESCRIPTION": "Tenant administration API. Authenticate with `Authorization: Bearer <api key>`.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

CACHES = {
    "default": (
        {"BACKEND": "portal.cache.SharedPoolRedisCache", "LOCATION": REDIS_URL}
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# --- Static files, i18n ---------------------------------------------------------------------

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"axes": {"level": "WARNING"}},
}
