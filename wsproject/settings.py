"""Django settings, every deployment-specific value read from the environment (docs/operations.md).

Defaults run locally; production needs ``DJANGO_SECRET_KEY`` and ``DJANGO_ALLOWED_HOSTS`` and refuses
to start without them. ``DJANGO_DEBUG`` is off unless set. This module reads only the environment:
``manage.py`` adds the checkout's development ``.env.dev`` to it first (``wsproject/cli.py``), and the
production server does not. A mistake raises ImproperlyConfigured with a one-line message saying what
to set, which the entry points print as that one line.
"""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from echo import conf as echo_conf
from echo.layer.redis_target import parse_redis_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    """Read a yes/no variable: 1/true/yes/on or 0/false/no/off, any case."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r}: expected one of 1/0, true/false, yes/no, on/off")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r}: expected a whole number") from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r}: expected a number") from None


def env_list(name: str) -> list[str]:
    """Read a comma-separated list, ignoring blanks around items."""
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", False)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set: set it to a long random value "
            "(python -c 'import secrets; print(secrets.token_urlsafe(50))'), "
            "or set DJANGO_DEBUG=1 for local development (`make run` writes both to .env.dev for manage.py)"
        )
    SECRET_KEY = "django-insecure-development-only-key"  # noqa: S105 - only ever used with DEBUG on

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS")
if not ALLOWED_HOSTS:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_ALLOWED_HOSTS is not set. List the host names this site is served as, "
            "comma-separated (for example 'example.com,www.example.com')."
        )
    ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]

# WebSocket handshakes with no Origin header are not from browser pages; refuse them only if asked.
WS_REQUIRE_ORIGIN = env_bool("WS_REQUIRE_ORIGIN", False)
# "Origin: null" is a page opened from a file (the original tutorial's page): development only.
WS_ALLOW_NULL_ORIGIN = env_bool("WS_ALLOW_NULL_ORIGIN", DEBUG)

INSTALLED_APPS = [
    # `manage.py runserver` is daphne, imported only when it runs (a development dependency); before
    # staticfiles, whose runserver it replaces.
    "wsproject.devserver",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # Login throttling (django-axes): failed logins counted per user name and per address.
    "axes",
    "echo",
]
# The tests' own app (a real model to publish and authorize by); never set in a deployment.
if env_bool("ECHO_TEST_APP", False):
    INSTALLED_APPS.append("tests.testapp")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves static files efficiently from any ASGI server, with compression and far-future caching.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "wsproject.security.ContentSecurityPolicyMiddleware",
    # Last, as django-axes asks: turns a refused login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

# Repeated failed logins for one user name, or from one address, are refused for a while (429, with
# the lockout page saying so), whatever the password; a successful login clears the count. The
# address is the client's as the server sees it (behind nginx: X-Forwarded-For from a trusted proxy,
# FORWARDED_ALLOW_IPS). `manage.py axes_reset` lifts every lockout.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(seconds=env_int("LOGIN_LOCKOUT_SECONDS", 900))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"

ROOT_URLCONF = "wsproject.urls"

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
            ]
        },
    }
]

ASGI_APPLICATION = "wsproject.asgi.application"

# Users, sessions and API keys (Redis carries everything live). SQLite in the checkout unless
# DATABASE_URL names another database (compose: PostgreSQL).
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several server processes share the file: readers do not wait for writers, and a writer waits
    # for the lock instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = LOGOUT_REDIRECT_URL = "echo:index"

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

# Why this layer, and why these numbers: docs/architecture.md, "The channel layer".
# CHANNEL_LAYER_BACKEND picks another Channels layer (a dotted path): channels-redis' layers carry
# echo and live data, without history.
CHANNEL_LAYER_BACKEND = os.environ.get("CHANNEL_LAYER_BACKEND", "echo.layer.RedisFanoutChannelLayer")
try:
    REDIS_TARGET = parse_redis_url(REDIS_URL)  # one server, a Sentinel service or a Cluster
except ValueError as exc:
    raise ImproperlyConfigured(f"REDIS_URL: {exc}") from None
CHANNEL_LAYER_CONFIG: dict[str, object] = {
    "hosts": [REDIS_URL],
    # Keeps this project's Redis channels apart from other apps on the same Redis.
    "prefix": os.environ.get("CHANNEL_LAYER_PREFIX", "wsdemo"),
}
if CHANNEL_LAYER_BACKEND.startswith("channels_redis."):
    # channels-redis takes a Sentinel service in its own host format, and no Cluster.
    try:
        CHANNEL_LAYER_CONFIG["hosts"] = REDIS_TARGET.channels_redis_hosts()
    except ValueError as exc:
        raise ImproperlyConfigured(f"REDIS_URL: {exc}") from None
if CHANNEL_LAYER_BACKEND in ("echo.layer.RedisFanoutChannelLayer", "channels_redis.core.RedisChannelLayer"):
    # Events a consumer may fall behind before it is told it lost data and is closed.
    CHANNEL_LAYER_CONFIG["capacity"] = env_int("CHANNEL_LAYER_CAPACITY", 1000)
if CHANNEL_LAYER_BACKEND == "echo.layer.RedisFanoutChannelLayer":
    # Messages kept per topic for replay and recovery (a stream in Redis, trimmed to this).
    CHANNEL_LAYER_CONFIG["history_length"] = env_int("HISTORY_LENGTH", 5000)
CHANNEL_LAYERS = {"default": {"BACKEND": CHANNEL_LAYER_BACKEND, "CONFIG": CHANNEL_LAYER_CONFIG}}

# The app's own settings (their defaults and meaning: echo/conf.py), from the environment where set.
globals().update(echo_conf.from_environment(os.environ))

# The production server's (wsproject/uvicorn_ws.py): seconds a client may leave its socket unread
# before it is closed with 1013, seconds clients get to answer the 1001 close on shutdown, seconds a
# request's headers may take to arrive (else 408), and permessage-deflate for clients that offer it.
WS_STALL_SECONDS = env_float("WS_STALL_SECONDS", 10)
WS_SHUTDOWN_SECONDS = env_float("WS_SHUTDOWN_SECONDS", 3)
HTTP_HEADERS_TIMEOUT = env_float("HTTP_HEADERS_TIMEOUT", 10)
WS_COMPRESSION = env_bool("WS_COMPRESSION", False)

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", BASE_DIR / "staticfiles"))
# The chart library, installed from npm (package.json) by `make run` / `make test` / the Docker build.
STATICFILES_DIRS = [("vendor/uplot", BASE_DIR / "node_modules" / "uplot" / "dist")]
# Production serves hashed, compressed copies made by `manage.py collectstatic` (the Docker build and
# `make serve` run it); development serves the files where they are.
STORAGES = {
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "wsproject.storage.HashedModulesStorage"
    }
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# Behind TLS. The production server already takes the scheme from a trusted proxy's
# X-Forwarded-Proto (FORWARDED_ALLOW_IPS); this header setting is for other ASGI servers.
if env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 0)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", SECURE_SSL_REDIRECT)
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {
        "routine": {"()": "wsproject.logfilters.DropRoutineConnectionLines"},
        "suspicious": {"()": "wsproject.logfilters.OneLineSuspiciousRequests"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["routine", "suspicious"],
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "django": {"level": os.environ.get("DJANGO_LOG_LEVEL", "INFO")},
        "axes": {"level": "WARNING"},  # lockouts, not its banner in every command's output
    },
}
