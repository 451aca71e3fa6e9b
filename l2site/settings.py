"""L2 settings. Every value comes from the environment (README, "Configuration").

Defaults are the safe production ones (DEBUG off, HTTPS-only cookies and redirects) except
where a value names a service: with no DATABASE_URL / CELERY_BROKER_URL the embedded
default of DESIGN §3 is used (see l2site/embedded.py).
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from l2site import embedded

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def env_bool(name: str, default: bool) -> bool:
    value = env(name)
    if value is None:
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}")


def env_number(name: str, default: float, cast=float):
    value = env(name)
    if value is None:
        return default
    try:
        return cast(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, not {value!r}") from exc


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in (env(name, default) or "").split(",") if item.strip()]


# --- Core -------------------------------------------------------------------------------
DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env("SECRET_KEY")
if SECRET_KEY is None:
    if env("DATABASE_URL"):
        raise ImproperlyConfigured("SECRET_KEY must be set when DATABASE_URL is set (production).")
    SECRET_KEY = embedded.secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

# HTTPS everywhere unless told otherwise (the embedded default on http://localhost says so).
HTTPS = env_bool("L2_HTTPS", True)
SECURE_SSL_REDIRECT = HTTPS
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = 31536000 if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("L2_BEHIND_PROXY", False) else None
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]  # probes speak plain HTTP inside the cluster
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django_htmx",
    "django_celery_beat",
    "django_celery_results",
    "axes",
    "inversions",
    "scanning",
    "publishing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "l2site.auth.ApiTokenMiddleware",
    "l2site.inputs.CleanInputMiddleware",  # 400 for NUL / lone surrogates in path, query, form, JSON
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "l2site.pages.MethodNotAllowedPages",
    "axes.middleware.AxesMiddleware",  # last (django-axes): the lockout answer
]

ROOT_URLCONF = "l2site.urls"
WSGI_APPLICATION = "l2site.wsgi.application"
CSRF_FAILURE_VIEW = "l2site.error_pages.csrf_failure"  # JSON under /api/
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

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
            ],
            "libraries": {"site": "l2site.sitetags"},
        },
    },
]

# --- Database ---------------------------------------------------------------------------
# The app (web, workers) connects as a role that owns no table; migrations run as the owner
# (l2site/db_roles.py, inversions/management/commands/migrate.py). None: one role for both.
DATABASE_MIGRATE = None
if env("DATABASE_URL"):
    DATABASES = {
        "default": dj_database_url.parse(
            env("DATABASE_URL"), conn_max_age=int(env_number("DATABASE_CONN_MAX_AGE", 60)), conn_health_checks=True
        )
    }
    if env("DATABASE_MIGRATE_URL") and env("DATABASE_MIGRATE_URL") != env("DATABASE_URL"):
        DATABASE_MIGRATE = dj_database_url.parse(env("DATABASE_MIGRATE_URL"))
else:
    DATABASES = {"default": embedded.database_settings()}
    DATABASE_MIGRATE = embedded.owner_settings()
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Login throttling (django-axes): after L2_LOGIN_FAILURE_LIMIT failed logins for one user name
# from one address, that pair is locked out for L2_LOGIN_LOCKOUT_MINUTES (each further try
# restarts the wait); a good login resets the count. Attempts are kept in the database (admin:
# "Axes"), so every web process sees them. The address is REMOTE_ADDR, or behind the proxy
# (L2_BEHIND_PROXY) the one it appended to X-Forwarded-For (l2site.auth.client_ip).
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = max(1, int(env_number("L2_LOGIN_FAILURE_LIMIT", 5, int)))
AXES_COOLOFF_TIME = timedelta(minutes=env_number("L2_LOGIN_LOCKOUT_MINUTES", 15.0))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_CLIENT_IP_CALLABLE = "l2site.auth.client_ip"
L2_BEHIND_PROXY = env_bool("L2_BEHIND_PROXY", False)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# --- Static files (whitenoise) ----------------------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if env_bool("L2_MANIFEST_STATIC", not DEBUG)
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not env_bool("L2_MANIFEST_STATIC", not DEBUG)

# --- Celery, beat, results, event bus ---------------------------------------------------
if env("CELERY_BROKER_URL"):
    CELERY_BROKER_URL = env("CELERY_BROKER_URL")
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_number("CELERY_VISIBILITY_TIMEOUT", 3600, int)}
else:
    CELERY_BROKER_URL, CELERY_BROKER_TRANSPORT_OPTIONS = embedded.broker_settings()
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Each worker also consumes its own queue (<hostname>.dq2): where a private scratch pins a program's steps.
CELERY_WORKER_DIRECT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# Events (DESIGN §10): a topic exchange on the broker, fed from the transactional outbox.
EVENT_BUS_URL = env("EVENT_BUS_URL", CELERY_BROKER_URL)
EVENT_BUS_TRANSPORT_OPTIONS = CELERY_BROKER_TRANSPORT_OPTIONS if EVENT_BUS_URL == CELERY_BROKER_URL else {}
EVENT_EXCHANGE = env("EVENT_EXCHANGE", "l2.events")
EVENT_RELAY_INTERVAL_SECONDS = env_number("EVENT_RELAY_INTERVAL_SECONDS", 10.0)
EVENT_RELAY_BATCH = int(env_number("EVENT_RELAY_BATCH", 500, int))
EVENT_RELAY_ON_COMMIT = env_bool("EVENT_RELAY_ON_COMMIT", True)
# After a commit the relay is woken by a thread of the process (inversions.relay), at most once per this
# many seconds: commits in a burst share one relay task; the request never waits for the broker.
EVENT_RELAY_KICK_SECONDS = max(0.0, env_number("EVENT_RELAY_KICK_SECONDS", 0.05))
# The data center's interservice bus (AMQP): the frame catalog's messages of each publication
# (catalog.frame.m / catalog.object.m), relayed from the same outbox. Embedded: the event bus.
ISB_URL = env("ISB_URL", EVENT_BUS_URL)
ISB_TRANSPORT_OPTIONS = EVENT_BUS_TRANSPORT_OPTIONS if ISB_URL == EVENT_BUS_URL else {}
ISB_EXCHANGE = env("ISB_EXCHANGE", "master.direct.x")
ISB_QUEUE_TYPE = env("ISB_QUEUE_TYPE", "classic")
if ISB_QUEUE_TYPE not in ("classic", "quorum"):
    raise ImproperlyConfigured(f"ISB_QUEUE_TYPE must be classic or quorum, not {ISB_QUEUE_TYPE!r}")

# --- The product ------------------------------------------------------------------------
L2_STALE_CLAIM_HOURS = env_number("L2_STALE_CLAIM_HOURS", 72.0)
# Programs per page on the dashboard's program list (and the queue).
L2_PAGE_SIZE = max(1, int(env_number("L2_PAGE_SIZE", 50, int)))
# The program list's count, when counting took at least L2_COUNT_CACHE_MIN_MS (a large archive), is
# kept per filter until a program changes (a transition, a scan), this long at most (paging through
# a filter counts once). 0: always count exactly.
L2_COUNT_CACHE_SECONDS = env_number("L2_COUNT_CACHE_SECONDS", 30.0)
L2_COUNT_CACHE_MIN_MS = env_number("L2_COUNT_CACHE_MIN_MS", 2.0)
# A page of the program list's table (its rows, the count and the pager, per filter, sort, page and
# time zone) is kept the same way, however fast it was made: until a program changes, this long at
# most; so is the whole page around it, for each user (l2site.viewhelpers.kept_render). 0: every
# page is made again.
L2_LIST_PAGE_CACHE_SECONDS = env_number("L2_LIST_PAGE_CACHE_SECONDS", 30.0)


# --- Collections and transfers (DESIGN §7, §9) -------------------------------------------
# A collection is a Globus collection id (production) or a name standing for one (embedded).
L2_TRANSFER_BACKEND = env("L2_TRANSFER_BACKEND", "local")  # local | globus
L2_L1_COLLECTION = env("L2_L1_COLLECTION", "dkist-l1")
L2_L1_PATH = env("L2_L1_PATH", "/{bucket}/{proposal}/{dataset}/")
L2_SCRATCH_COLLECTION = env("L2_SCRATCH_COLLECTION", "scratch")
L2_SCIENCE_COLLECTION = env("L2_SCIENCE_COLLECTION", "science-cluster")
L2_SCIENCE_PATH = env("L2_SCIENCE_PATH", "/l2/{proposal}/{program}/")
L2_PUBLISH_COLLECTION = env("L2_PUBLISH_COLLECTION", "publish")
L2_PUBLISH_PATH = env("L2_PUBLISH_PATH", "/{bucket}/{proposal}/{inversion}/")
if L2_TRANSFER_BACKEND not in ("local", "globus"):
    raise ImproperlyConfigured(f"L2_TRANSFER_BACKEND must be local or globus, not {L2_TRANSFER_BACKEND!r}")
# The globus backend's confidential client (client-credentials grant; inversions/globus_transfers.py).
GLOBUS_CLIENT_ID = env("GLOBUS_CLIENT_ID", "")
GLOBUS_CLIENT_SECRET = env("GLOBUS_CLIENT_SECRET", "")
if L2_TRANSFER_BACKEND == "globus" and not (GLOBUS_CLIENT_ID and GLOBUS_CLIENT_SECRET):
    raise ImproperlyConfigured("L2_TRANSFER_BACKEND=globus needs GLOBUS_CLIENT_ID and GLOBUS_CLIENT_SECRET")
# How long a pipeline waits before asking Globus again how a transfer is going.
GLOBUS_POLL_SECONDS = env_number("GLOBUS_POLL_SECONDS", 30.0)
# Scratch folder of one inversion: results/ (the fetched result files) and files/ (the L2 files).
L2_SCRATCH_L2_PATH = env("L2_SCRATCH_L2_PATH", "/l2/{proposal}/{inversion}/")


def _collections() -> dict[str, str]:
    """Collection -> the local folder where its files are visible on this machine."""
    import json

    raw = env("L2_COLLECTIONS")
    if raw is None:
        root = embedded.var_dir() / "collections"
        names = (L2_L1_COLLECTION, L2_SCRATCH_COLLECTION, L2_SCIENCE_COLLECTION, L2_PUBLISH_COLLECTION)
        return {name: str(root / name) for name in names}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"L2_COLLECTIONS must be a JSON object, not {raw[:80]!r}") from exc
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ImproperlyConfigured('L2_COLLECTIONS must map collection ids to folders: {"id": "/path", ...}')
    return value


# Where each collection's files are visible locally: the local backend copies between these
# folders; with Globus, scratch (and the science cluster, for result intake) must be listed.
L2_COLLECTIONS = _collections()
# This process's own scratch folder: it replaces the scratch collection's folder in
# L2_COLLECTIONS. Set it per worker (with its own -n hostname) when every worker machine has
# its own scratch disk: scratch is then private, and a program's steps after staging stay on
# the worker that staged it (Celery's per-worker queue, CELERY_WORKER_DIRECT).
L2_SCRATCH_DIR = env("L2_SCRATCH_DIR", "")
if L2_SCRATCH_DIR:
    L2_COLLECTIONS = {**L2_COLLECTIONS, L2_SCRATCH_COLLECTION: L2_SCRATCH_DIR}
# Scratch that no other worker sees (default: when L2_SCRATCH_DIR is set). Shared scratch
# (false: one file system every worker mounts) lets any worker take any step.
L2_SCRATCH_PRIVATE = env_bool("L2_SCRATCH_PRIVATE", bool(L2_SCRATCH_DIR))

# --- Preprocessing (DESIGN §7) ------------------------------------------------------------
# A program's folder on scratch: staged L1 frames (l1/), each work order's cubes, quick-looks
# and manifest (orders/<id>/). {program}: the instrument program execution id; {proposal}.
L2_SCRATCH_PATH = env("L2_SCRATCH_PATH", "/preprocess/{proposal}/{program}/")
# Programs preprocessed at once when beat starts them (operators may start more).
L2_PREPROCESS_CONCURRENCY = max(0, int(env_number("L2_PREPROCESS_CONCURRENCY", 2, int)))
L2_PREPROCESS_INTERVAL_SECONDS = env_number("L2_PREPROCESS_INTERVAL_SECONDS", 60.0)
L2_PREPROCESS_POLL_SECONDS = env_number("L2_PREPROCESS_POLL_SECONDS", 30.0)
L2_PREPROCESS_MAX_RETRIES = max(0, int(env_number("L2_PREPROCESS_MAX_RETRIES", 5, int)))
L2_PREPROCESS_RETRY_SECONDS = env_number("L2_PREPROCESS_RETRY_SECONDS", 30.0)
# A work order's heartbeat (refreshed while a worker runs its step) older than this, with no
# worker holding the order: beat sends its step again (a worker killed, a message lost).
L2_HEARTBEAT_STALE_SECONDS = max(1.0, env_number("L2_HEARTBEAT_STALE_SECONDS", 120.0))
# Private scratch: a stalled order whose staging worker has not come back for this long (beat
# resending its step to that worker's own queue all along) is staged again on any worker.
L2_SCRATCH_WORKER_GONE_SECONDS = max(1.0, env_number("L2_SCRATCH_WORKER_GONE_SECONDS", 1800.0))
# The embedded default's demo L1 frames (manage.py make_demo_l1): for this many Invertible programs.
L2_DEMO_L1_PROGRAMS = max(0, int(env_number("L2_DEMO_L1_PROGRAMS", 2, int)))

# The metadata store (DESIGN §5). `./l2 up` points these at the embedded emulator.
METADATA_STORE_URL = env("METADATA_STORE_URL", "http://127.0.0.1:8765/graphql")
METADATA_STORE_TOKEN = env("METADATA_STORE_TOKEN", "")
METADATA_STORE_TIMEOUT = env_number("METADATA_STORE_TIMEOUT", 60.0)
METADATA_STORE_MAX_ATTEMPTS = int(env_number("METADATA_STORE_MAX_ATTEMPTS", 5, int))
METADATA_STORE_BACKOFF_SECONDS = env_number("METADATA_STORE_BACKOFF_SECONDS", 0.5)
# The most one request may take in all (its tries, their answers, the waits between them).
METADATA_STORE_DEADLINE_SECONDS = env_number("METADATA_STORE_DEADLINE_SECONDS", 120.0)
if METADATA_STORE_DEADLINE_SECONDS <= 0:
    raise ImproperlyConfigured("METADATA_STORE_DEADLINE_SECONDS must be positive")
SCAN_PAGE_SIZE = int(env_number("SCAN_PAGE_SIZE", 1000, int))
SCAN_OVERLAP_MINUTES = env_number("SCAN_OVERLAP_MINUTES", 60.0)
SCAN_INTERVAL_SECONDS = env_number("SCAN_INTERVAL_SECONDS", 900.0)
# Qualification batches written at once by a scan, each in a database connection of its own.
SCAN_QUALIFY_WORKERS = max(1, int(env_number("SCAN_QUALIFY_WORKERS", 2, int)))

# Settling and qualification (DESIGN §5, §6).
L2_SETTLE_DAYS = env_number("L2_SETTLE_DAYS", 3.0)
L2_HEALTH_MIN = env_number("L2_HEALTH_MIN", 0.75)
L2_AO_MIN = env_number("L2_AO_MIN", 0.75)
L2_FRIED_AMBER = env_number("L2_FRIED_AMBER", 0.07)
L2_FRIED_RED = env_number("L2_FRIED_RED", 0.05)
L2_LINE_TOLERANCE_NM = env_number("L2_LINE_TOLERANCE_NM", 0.5)

# What beat runs, created on migrate (name: (task, seconds)); edit intervals in the admin.
L2_PERIODIC_TASKS = {
    "relay events": ("inversions.relay_events", EVENT_RELAY_INTERVAL_SECONDS),
    "scan the metadata store": ("scanning.scan_metadata_store", SCAN_INTERVAL_SECONDS),
    "preprocess invertible programs": ("inversions.preprocess_pending", L2_PREPROCESS_INTERVAL_SECONDS),
}
L2_API_TOKEN_PREFIX = "l2t_"

# --- Publishing (DESIGN §9) -------------------------------------------------------------
# Processes generating L2 frames in parallel per generate task (0: one per CPU core).
L2_GENERATE_WORKERS = int(env_number("L2_GENERATE_WORKERS", 0, int))
# Notifying the metadata store: tries (task retries, each after the client's own retries)
# and the base of the exponential backoff between them (full jitter, capped at one hour).
L2_PUBLISH_MAX_TRIES = max(1, int(env_number("L2_PUBLISH_MAX_TRIES", 8, int)))
L2_PUBLISH_BACKOFF_SECONDS = env_number("L2_PUBLISH_BACKOFF_SECONDS", 30.0)
# The schema has no mutation deleting an L2 inversion: reconcile --remove-extra (and
# --update-existing, as delete + create) POST {"inversionId": …} here when it is set
# (the emulator: http://…/_control/l2inversions/delete); unset, they report what they cannot do.
METADATA_STORE_L2_DELETE_URL = env("METADATA_STORE_L2_DELETE_URL", "")
RECONCILE_INTERVAL_SECONDS = env_number("RECONCILE_INTERVAL_SECONDS", 3600.0)
# The inversion software's git repository (a URL or a local path): a reported commit must exist
# there (checked with git, within the timeout). Empty: only the commit's format is checked.
L2_INVERSION_REPO = env("L2_INVERSION_REPO", "")
L2_INVERSION_REPO_TIMEOUT = env_number("L2_INVERSION_REPO_TIMEOUT", 30.0)
# Event-bus intake (`manage.py consume_events`): "inverted" messages name a client token, or one
# of these trusted client names (the broker's own authentication stands for them).
L2_EVENT_CLIENTS = env_list("L2_EVENT_CLIENTS")
# Workers carry an Inverted program on by themselves (DESIGN §2: "periodically and on demand"):
# generate its L2 files once its results are accepted, publish them once generated. With
# L2_AUTO_PUBLISH off, publication waits for an operator's confirmation on the program page.
L2_AUTO_GENERATE = env_bool("L2_AUTO_GENERATE", True)
L2_AUTO_PUBLISH = env_bool("L2_AUTO_PUBLISH", True)
L2_PERIODIC_TASKS["reconcile with the metadata store"] = ("publishing.reconcile", RECONCILE_INTERVAL_SECONDS)
L2_PERIODIC_TASKS["generate and publish inverted programs"] = ("publishing.advance_inverted", L2_PREPROCESS_INTERVAL_SECONDS)
L2_PERIODIC_TASKS["resend stalled publishing orders"] = ("publishing.resend_stalled", L2_PREPROCESS_INTERVAL_SECONDS)

# --- Sign-in with Globus (l2site/globus_auth.py; social-auth-app-django) -----------------
# Off unless GLOBUS_AUTH_CLIENT_ID is set: then the login page offers "Sign in with Globus"
# (local accounts stay for admins, tests and the embedded default). A separate client from
# the transfer client above (GLOBUS_CLIENT_ID).
GLOBUS_AUTH_CLIENT_ID = env("GLOBUS_AUTH_CLIENT_ID", "")
GLOBUS_AUTH_CLIENT_SECRET = env("GLOBUS_AUTH_CLIENT_SECRET", "")
GLOBUS_AUTH_ENABLED = bool(GLOBUS_AUTH_CLIENT_ID)
if GLOBUS_AUTH_ENABLED and not GLOBUS_AUTH_CLIENT_SECRET:
    raise ImproperlyConfigured("GLOBUS_AUTH_CLIENT_ID needs GLOBUS_AUTH_CLIENT_SECRET")
# Identity domains allowed to sign in (the part after @ of the Globus identity username).
GLOBUS_AUTH_ALLOWED_DOMAINS = [d.lower() for d in env_list("GLOBUS_AUTH_ALLOWED_DOMAINS")]
GLOBUS_SCIENCE_GROUP = env("GLOBUS_SCIENCE_GROUP", "")
GLOBUS_OPERATORS_GROUP = env("GLOBUS_OPERATORS_GROUP", "")
# Globus Auth (OpenID Connect issuer, token revocation) and the Groups API; tests point them
# at a local provider.
GLOBUS_AUTH_URL = env("GLOBUS_AUTH_URL", "https://auth.globus.org").rstrip("/")
GLOBUS_GROUPS_URL = env("GLOBUS_GROUPS_URL", "https://groups.api.globus.org").rstrip("/")
# Collection name -> Globus collection UUID, for "Open in Globus" links where an L2_*_COLLECTION
# is a name (the embedded default) rather than the collection's UUID.
L2_GLOBUS_COLLECTION_IDS = env("L2_GLOBUS_COLLECTION_IDS", "")
# The library: social-auth-app-django with social-core's Globus OpenID Connect backend (README).
# Installed whether or not Globus is configured (its views answer 404 while it is not).
INSTALLED_APPS.append("social_django")
AUTHENTICATION_BACKENDS = [  # django-axes first: a locked-out user name and address is refused before any backend
    *AUTHENTICATION_BACKENDS,
    "social_core.backends.globus.GlobusOpenIdConnect",
]
MIDDLEWARE.append("l2site.globus_auth.SignInErrorMiddleware")
# social-core reads these by name through its strategy.
SOCIAL_AUTH_GLOBUS_KEY = GLOBUS_AUTH_CLIENT_ID
SOCIAL_AUTH_GLOBUS_SECRET = GLOBUS_AUTH_CLIENT_SECRET
SOCIAL_AUTH_GLOBUS_OIDC_ENDPOINT = GLOBUS_AUTH_URL
SOCIAL_AUTH_GLOBUS_AUTH_EXTRA_ARGUMENTS = {"access_type": "offline"}
SOCIAL_AUTH_GLOBUS_SCOPE = ["urn:globus:auth:scope:groups.api.globus.org:view_my_groups_and_memberships"]
SOCIAL_AUTH_JSONFIELD_ENABLED = True
SOCIAL_AUTH_LOGIN_ERROR_URL = "/accounts/login/"
SOCIAL_AUTH_LOGIN_REDIRECT_URL = "/"
SOCIAL_AUTH_RAISE_EXCEPTIONS = False
SOCIAL_AUTH_PIPELINE = (
    "social_core.pipeline.social_auth.social_details",
    "social_core.pipeline.social_auth.social_uid",
    "l2site.globus_auth.check_domain",
    "l2site.globus_auth.fetch_roles",  # Groups API, before any user exists
    "social_core.pipeline.social_auth.social_user",
    "l2site.globus_auth.refuse_superuser",
    "social_core.pipeline.user.get_username",
    "social_core.pipeline.user.create_user",
    "social_core.pipeline.social_auth.associate_user",
    "social_core.pipeline.social_auth.load_extra_data",
    "social_core.pipeline.user.user_details",
    "l2site.globus_auth.apply_roles",
)
SOCIAL_AUTH_PROTECTED_USER_FIELDS = ["is_staff", "is_superuser"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"expected_answers": {"()": "l2site.logfilters.ExpectedAnswers"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["expected_answers"]}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
