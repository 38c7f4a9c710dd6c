"""Nephele settings.

Everything comes from environment variables (see .env.example). The defaults
are the zero-setup ones used by `make run`: SQLite, an embedded Celery broker
on a local SQLite file, console e-mail, no OIDC provider.
"""
from datetime import timedelta
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"  # local state of the embedded defaults (SQLite files)
VAR_DIR.mkdir(exist_ok=True)

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
# A fixed dev key is fine for the embedded defaults; production sets SECRET_KEY.
SECRET_KEY = env("SECRET_KEY", default="nephele-insecure-development-key-change-me")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
SITE_NAME = env("SITE_NAME", default="Nephele")
PORTAL_BASE_URL = env("PORTAL_BASE_URL", default="http://127.0.0.1:8000")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "allauth",
    "allauth.account",
    "mozilla_django_oidc",
    "auditlog",
    "django_htmx",
    "csp",
    "portal",
    "projects",
    "clusters",
    "jobs",
    "accounting",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "auditlog.middleware.AuditlogMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "csp.middleware.CSPMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
AUTH_USER_MODEL = "portal.User"

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
                "portal.context_processors.site",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'nephele.sqlite3'}"),
}
# Keep connections between requests (a new PostgreSQL connection costs ms).
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
# PostgreSQL: parameters bound on the server and statements prepared once a
# connection has run them DB_PREPARE_THRESHOLD times, so the hot paths (a job
# POST, the workers' claims) are not parsed and planned again every time:
# about half of PostgreSQL's CPU per job POST. 0 turns it off (e.g. behind
# PgBouncer in transaction mode before 1.21).
DB_PREPARE_THRESHOLD = env.int("DB_PREPARE_THRESHOLD", default=2)
if DATABASES["default"]["ENGINE"].endswith("postgresql") and DB_PREPARE_THRESHOLD > 0:
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        server_side_binding=True, prepare_threshold=DB_PREPARE_THRESHOLD)
SILENCED_SYSTEM_CHECKS = []
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Celery worker, beat and the web server share the file: wait on locks.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
    # The rollups' NULLS NOT DISTINCT key exists on PostgreSQL only; fine for trials.
    SILENCED_SYSTEM_CHECKS.append("models.W047")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {"default": env.cache("CACHE_URL", default="locmemcache://")}

# --- Celery -----------------------------------------------------------------
# Embedded broker: kombu's SQLAlchemy transport on a local SQLite file, so no
# server is needed. CELERY_BROKER_URL=redis://... switches to Redis.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=f"sqla+sqlite:///{VAR_DIR / 'celery-broker.sqlite3'}")
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default=None)
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_DEFAULT_QUEUE = env("CELERY_TASK_DEFAULT_QUEUE", default="celery")
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    "sync-slurm-jobs": {
        "task": "jobs.tasks.sync_all_clusters",
        "schedule": timedelta(seconds=env.int("JOB_SYNC_SECONDS", default=15)),
    },
    "ingest-slurm-accounting": {
        "task": "accounting.tasks.ingest_all_clusters",
        "schedule": timedelta(minutes=10),
    },
    "rollup-vm-usage": {
        "task": "accounting.tasks.rollup_vm_usage",
        "schedule": timedelta(hours=1),
    },
    "sync-openstack-servers": {
        "task": "clusters.tasks.sync_clouds",
        "schedule": timedelta(seconds=env.int("CLOUD_SYNC_SECONDS", default=60)),
    },
    "sync-openstack-catalogs": {
        "task": "clusters.tasks.sync_catalogs",
        "schedule": timedelta(hours=1),
    },
    "sync-openstack-quotas": {
        "task": "clusters.tasks.sync_openstack_quotas",
        "schedule": timedelta(hours=1),
    },
    "sync-slurm-limits": {
        "task": "clusters.tasks.sync_slurm_limits",
        "schedule": timedelta(hours=1),
    },
    "sync-slurm-partitions": {
        "task": "clusters.tasks.sync_all_partitions",
        "schedule": timedelta(hours=1),
    },
    "expire-quota-limits": {
        "task": "projects.tasks.expire_quota_limits",
        "schedule": timedelta(hours=6),
    },
    "recount-quotas": {
        "task": "projects.tasks.recount_quotas",
        "schedule": timedelta(hours=1),
    },
    "expire-invitations": {
        "task": "projects.tasks.expire_invitations",
        "schedule": timedelta(hours=1),
    },
}

# --- Authentication ------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "account_login"

ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = env("ACCOUNT_EMAIL_VERIFICATION", default="optional")
ACCOUNT_ALLOW_SIGNUP = env.bool("ACCOUNT_ALLOW_SIGNUP", default=True)
ACCOUNT_ADAPTER = "portal.auth.AccountAdapter"
ACCOUNT_LOGOUT_ON_GET = False
ACCOUNT_USER_MODEL_USERNAME_FIELD = "username"
# Failed-login throttling (allauth's rate limits, kept in the cache).
ACCOUNT_RATE_LIMITS = {
    "login_failed": env("LOGIN_FAILED_RATE_LIMIT", default="10/m/ip,5/5m/key"),
}

# OpenID Connect (mozilla-django-oidc). Enabled when the endpoints are set.
# Clouds configured as "an entry of the portal's clouds.yaml" read this file.
NEPHELE_CLOUDS_YAML = env("NEPHELE_CLOUDS_YAML", default="/etc/openstack/clouds.yaml")

OIDC_RP_CLIENT_ID = env("OIDC_RP_CLIENT_ID", default="")
OIDC_RP_CLIENT_SECRET = env("OIDC_RP_CLIENT_SECRET", default="")
OIDC_OP_AUTHORIZATION_ENDPOINT = env("OIDC_OP_AUTHORIZATION_ENDPOINT", default="")
OIDC_OP_TOKEN_ENDPOINT = env("OIDC_OP_TOKEN_ENDPOINT", default="")
OIDC_OP_USER_ENDPOINT = env("OIDC_OP_USER_ENDPOINT", default="")
OIDC_OP_JWKS_ENDPOINT = env("OIDC_OP_JWKS_ENDPOINT", default="")
OIDC_OP_LOGOUT_ENDPOINT = env("OIDC_OP_LOGOUT_ENDPOINT", default="")
OIDC_RP_SIGN_ALGO = env("OIDC_RP_SIGN_ALGO", default="RS256")
OIDC_RP_SCOPES = env("OIDC_RP_SCOPES", default="openid email profile groups entitlements")
OIDC_PROVIDER_NAME = env("OIDC_PROVIDER_NAME", default="your institution")
OIDC_ENABLED = bool(OIDC_RP_CLIENT_ID and OIDC_OP_AUTHORIZATION_ENDPOINT and OIDC_OP_TOKEN_ENDPOINT)
OIDC_USERNAME_ALGO = "portal.auth.generate_username"
OIDC_CREATE_USER = True
OIDC_STORE_ID_TOKEN = bool(OIDC_OP_LOGOUT_ENDPOINT)
OIDC_OP_LOGOUT_URL_METHOD = "portal.auth.provider_logout_url"
LOGIN_REDIRECT_URL_FAILURE = "/login/refused/"
# Claims whose values are matched against NEPHELE_CLAIM_RULES (regexes with
# named groups `project` and optional `role`, separated by white space, since
# a regex may well hold a comma) to give project memberships.
NEPHELE_MEMBERSHIP_CLAIMS = env.list("NEPHELE_MEMBERSHIP_CLAIMS", default=["eduperson_entitlement", "groups"])
NEPHELE_CLAIM_RULES = env.str(
    "NEPHELE_CLAIM_RULES",
    default=r"^urn:mace:nephele:project:(?P<project>[a-z0-9][a-z0-9-]*)(?::role=(?P<role>manager|member))?$"
    r" ^nephele-(?P<project>[a-z0-9][a-z0-9-]*)-(?P<role>manager|member)$",
).split()
# Claim giving a user's POSIX name on the clusters (e.g. `uid`); empty: staff set names.
NEPHELE_POSIX_USERNAME_CLAIM = env("NEPHELE_POSIX_USERNAME_CLAIM", default="")
# Values of these claims (in NEPHELE_MEMBERSHIP_CLAIMS) make a user staff.
NEPHELE_STAFF_CLAIM_VALUES = env.list("NEPHELE_STAFF_CLAIM_VALUES", default=[])
if OIDC_ENABLED:
    AUTHENTICATION_BACKENDS.append("portal.auth.OIDCBackend")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- E-mail -----------------------------------------------------------------
EMAIL_BACKEND = env("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
if env("EMAIL_URL", default=""):
    vars().update(env.email_url("EMAIL_URL"))
EMAIL_FILE_PATH = env("EMAIL_FILE_PATH", default=str(VAR_DIR / "mail"))
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="Nephele <nephele@localhost>")
INVITATION_VALID_DAYS = env.int("INVITATION_VALID_DAYS", default=14)
# Days before an approved temporary limit ends that its requester is warned.
QUOTA_EXPIRY_WARNING_DAYS = env.int("QUOTA_EXPIRY_WARNING_DAYS", default=7)
# Limits a new project starts with, e.g. "cores=8,ram_mb=16384,core_hours=1000" (others: 0).
NEPHELE_DEFAULT_QUOTAS = {
    key.strip(): int(value)
    for key, _, value in (item.partition("=") for item in env("NEPHELE_DEFAULT_QUOTAS", default="").split(","))
    if key.strip()
}

# --- Security -----------------------------------------------------------------
SESSION_COOKIE_NAME = "nephele_session"  # not `_session`: the test IdP uses that name
SESSION_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if env.bool("BEHIND_TLS_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

from urllib.parse import urlsplit  # noqa: E402

from csp.constants import NONE, SELF  # noqa: E402


def _origin(url):
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


# Forms that end in a redirect to the identity provider (sign-out) need its origin.
_IDP_ORIGINS = sorted({o for o in map(_origin, [OIDC_OP_AUTHORIZATION_ENDPOINT, OIDC_OP_LOGOUT_ENDPOINT]) if o})

CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        # Bootstrap progress bars and Swagger UI set style attributes.
        "style-src": [SELF, "'unsafe-inline'"],
        "img-src": [SELF, "data:"],
        "font-src": [SELF, "data:"],
        "connect-src": [SELF],
        "frame-ancestors": [NONE],
        "form-action": [SELF] + _IDP_ORIGINS + env.list("CSP_FORM_ACTION", default=[]),
        "object-src": [NONE],
        "base-uri": [SELF],
    },
}

# --- REST API -------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "portal.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "portal.api.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Nephele API",
    "DESCRIPTION": "Self-service research computing: projects, quotas, servers and jobs.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Static files, i18n -----------------------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env("STATIC_ROOT", default=str(VAR_DIR / "staticfiles"))
Path(STATIC_ROOT).mkdir(parents=True, exist_ok=True)
LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
# Serve static files straight from the app folders, so `make run` needs no
# collectstatic; production may run collectstatic and turn this off.
WHITENOISE_USE_FINDERS = env.bool("WHITENOISE_USE_FINDERS", default=True)
