"""Settings for Checkpoint Console, read from the environment.

Every setting is optional and the defaults run locally (SQLite and a file
store under var/). A bad value stops the process at start with a message that
names the variable: a typo must not silently fall back to a default.
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from checkpoints import units
from checkpoints.dburl import parse_database_url, redact
from checkpoints.sources.registry import kind_of
from checkpoints.s3client import S3Settings

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("CONSOLE_VAR_DIR", BASE_DIR / "var"))


def _env(name, default, parse):
    raw = os.environ.get(name, "")
    if raw.strip() == "":
        return default
    try:
        return parse(raw)
    except ValueError as e:
        # The message is printed and logged: never with a URL's password.
        raise ImproperlyConfigured(f"{name}={_shown(raw)!r} is invalid: {e}") from None


def _shown(raw):
    try:
        return redact(raw)
    except ValueError:  # not even splittable as a URL: nothing to hide
        return raw


def redis_with_timeouts(url, connect=2, read=10):
    """`url` with socket timeouts unless it names its own.

    redis-py waits forever by default, so a broker that accepts and never
    answers would hang every page that asks for the queue size. The read
    timeout stays above django-q's 1 s BLPOP wait.

    >>> redis_with_timeouts("redis://h:6379/0")
    'redis://h:6379/0?socket_connect_timeout=2&socket_timeout=10'
    >>> redis_with_timeouts("redis://h/0?socket_timeout=30")
    'redis://h/0?socket_timeout=30&socket_connect_timeout=2'
    """
    from urllib.parse import parse_qsl, urlencode, urlsplit

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.setdefault("socket_connect_timeout", str(connect))
    query.setdefault("socket_timeout", str(read))
    return parts._replace(query=urlencode(query)).geturl()


# The cache's socket timeouts (seconds): a cache server that is down or hangs
# must cost a page a fraction of a second, once (dashboard.cachebackend).
CACHE_CONNECT_TIMEOUT = 0.5
CACHE_READ_TIMEOUT = 1.0


def cache_config(url):
    """The CACHES["default"] entry for a CACHE_URL; the local-memory cache when empty.

    `valkey://` is Valkey's name for the Redis protocol (`valkeys://` with TLS).

    >>> cache_config("")["BACKEND"]
    'django.core.cache.backends.locmem.LocMemCache'
    >>> c = cache_config("valkey://cache.internal:6380/2")
    >>> c["BACKEND"], c["LOCATION"], c["OPTIONS"]["socket_timeout"]
    ('dashboard.cachebackend.ResilientRedisCache', 'redis://cache.internal:6380/2', 1.0)
    >>> cache_config("memcached://x:11211")
    Traceback (most recent call last):
    ...
    ValueError: use redis://, rediss://, valkey:// or valkeys://, or leave it unset for the local-memory cache
    >>> cache_config("redis://h:port/0")
    Traceback (most recent call last):
    ...
    ValueError: the port is not a number
    """
    from urllib.parse import urlsplit

    url = url.strip()
    if not url:
        # Per process: a page's second view in the same web process is served from it.
        return {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "checkpoint-console",
                "OPTIONS": {"MAX_ENTRIES": 500}}
    schemes = {"redis": "redis", "rediss": "rediss", "valkey": "redis", "valkeys": "rediss"}
    parts = urlsplit(url)
    if parts.scheme.lower() not in schemes:
        raise ValueError("use redis://, rediss://, valkey:// or valkeys://, or leave it unset for the local-memory cache")
    try:
        parts.port
    except ValueError:
        raise ValueError("the port is not a number") from None
    if not parts.hostname:
        raise ValueError("no host")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"the database {db!r} is not a number")
    return {
        # RedisCache that serves a miss instead of an error when the server is down or slow.
        "BACKEND": "dashboard.cachebackend.ResilientRedisCache",
        "LOCATION": parts._replace(scheme=schemes[parts.scheme.lower()]).geturl(),
        # Timeouts named in the URL's query (socket_timeout=...) take precedence in redis-py.
        "OPTIONS": {"socket_connect_timeout": CACHE_CONNECT_TIMEOUT, "socket_timeout": CACHE_READ_TIMEOUT},
    }


def env_str(name, default=""):
    return _env(name, default, str.strip)


def env_bool(name, default=False):
    return _env(name, default, units.parse_bool)


def env_int(name, default, minimum=None, maximum=None):
    def parse(raw):
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("not a whole number") from None
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}")
        return value

    return _env(name, default, parse)


def env_size(name, default):
    return _env(name, default, units.parse_size)


def env_duration(name, default):
    return _env(name, default, units.parse_duration)


def env_database(name, default):
    return _env(name, default, parse_database_url)


def env_list(name, default):
    return _env(name, default, lambda raw: [p.strip() for p in raw.split(",") if p.strip()])


SECRET_KEY = env_str("SECRET_KEY", "")
DEBUG = env_bool("DEBUG", False)
if not SECRET_KEY:
    # A stable key for the embedded default, kept under var/ so sessions and
    # signed download links survive restarts; never shared between installs.
    _key_file = VAR_DIR / "secret_key"
    try:
        SECRET_KEY = _key_file.read_text().strip()
    except FileNotFoundError:
        import secrets

        VAR_DIR.mkdir(parents=True, exist_ok=True)
        SECRET_KEY = secrets.token_urlsafe(50)
        _key_file.write_text(SECRET_KEY)
        _key_file.chmod(0o600)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_q",
    "axes",
    "checkpoints",
    "storage",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "dashboard.middleware.RejectNulMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into the 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "dashboard.urls"
WSGI_APPLICATION = "dashboard.wsgi.application"

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
        },
    },
]

_default_db = {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": str(VAR_DIR / "console.sqlite3"),
    "OPTIONS": {},
}
DATABASES = {"default": env_database("DATABASE_URL", _default_db)}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The web server, the task cluster and syncs share one file: WAL and a
    # busy timeout keep readers and the single writer from failing at once.
    DATABASES["default"]["OPTIONS"].setdefault("timeout", 30)
    DATABASES["default"]["OPTIONS"].setdefault(
        "init_command", "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    )
    DATABASES["default"]["OPTIONS"].setdefault("transaction_mode", "IMMEDIATE")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
# The axes backend comes first: it refuses a locked-out (user, address) pair
# before the password is even checked. Ours reads permissions in one statement
# per request and answers every permission question; ModelBackend stays listed
# only so that sessions logged in through it still load (dashboard.authbackend).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "dashboard.authbackend.PermissionsBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Hashed, compressed names once collectstatic has run; plain names before.
    "staticfiles": {"BACKEND": "dashboard.staticstorage.FallbackManifestStaticFilesStorage"},
}
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    # plotly.js comes from the installed plotly package, never from a CDN.
    "dashboard.staticfinders.PlotlyFinder",
]
# Pages work from a fresh checkout before collectstatic has run: the storage
# links unknown names plainly and WhiteNoise serves them from the finders.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

SECURE_CONTENT_TYPE_NOSNIFF = True
SESSION_COOKIE_HTTPONLY = True
# Django's database sessions, loaded without compiling a query per request (dashboard.sessions).
SESSION_ENGINE = "dashboard.sessions"
X_FRAME_OPTIONS = "DENY"

# --- HTTPS and login throttling -------------------------------------------------
# HTTPS=true: the console is reached over https only (redirect, HSTS, cookies
# never sent in clear), which is what `manage.py check --deploy` asks for.
# TRUSTED_PROXY=true: one TLS-terminating proxy stands in front and sets
# X-Forwarded-Proto and X-Forwarded-For; never set it without such a proxy, or
# any client could claim https or another address.
HTTPS = env_bool("HTTPS", False)
TRUSTED_PROXY = env_bool("TRUSTED_PROXY", False)
HSTS_SECONDS = env_int("HSTS_SECONDS", 31_536_000, minimum=0)
if TRUSTED_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
if HTTPS:
    SECURE_SSL_REDIRECT = True
    SECURE_HSTS_SECONDS = HSTS_SECONDS
    # HSTS applies to the console's host and the names under it, never to a
    # parent domain; preload only allows a submission to browsers' lists.
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

# django-axes: after LOGIN_FAILURE_LIMIT failed logins for one username from
# one address, that pair is refused for LOGIN_LOCKOUT (each further try
# restarts it); every failed login is kept in the admin's access failure log.
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
LOGIN_LOCKOUT = env_duration("LOGIN_LOCKOUT", units.parse_duration("15m"))
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = LOGIN_LOCKOUT
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_ENABLE_ACCESS_FAILURE_LOG = True
AXES_CLIENT_IP_CALLABLE = "dashboard.throttle.client_address"
AXES_LOCKOUT_CALLABLE = "dashboard.throttle.locked_out"

# --- LangGraph sources -------------------------------------------------------
CHECKPOINT_DATABASE_URL = _env("CHECKPOINT_DATABASE_URL", "", lambda raw: (kind_of(raw), raw.strip())[1])
SYNC_INTERVAL = env_duration("SYNC_INTERVAL", units.parse_duration("1m"))


def _capture_mode(raw):
    mode = raw.strip().lower()
    if mode not in ("scan", "logical"):
        raise ValueError("expected scan or logical")
    return mode


CHECKPOINT_CAPTURE = _env("CHECKPOINT_CAPTURE", "scan", _capture_mode)
# Retained WAL of a source's replication slot above which the console warns.
CAPTURE_WAL_WARN = env_size("CAPTURE_WAL_WARN", units.parse_size("1GB"))
CHECKPOINT_SIZE_LIMIT = env_size("CHECKPOINT_SIZE_LIMIT", 10_000_000)
STORAGE_QUOTA = env_size("STORAGE_QUOTA", None)
USAGE_KEEP_DAYS = env_int("USAGE_KEEP_DAYS", 400, minimum=1)
# Run history: routine runs (sync, reference check) and the audit log (prune, sweep, remove).
RUN_KEEP_DAYS = env_int("RUN_KEEP_DAYS", 30, minimum=1)
AUDIT_KEEP_DAYS = env_int("AUDIT_KEEP_DAYS", 400, minimum=1)
TAG_EXCLUDE = env_list("TAG_EXCLUDE", ["*key*", "*token*", "*secret*", "*password*", "*auth*"])
LANGGRAPH_AES_KEY = env_str("LANGGRAPH_AES_KEY", "")
if LANGGRAPH_AES_KEY and len(LANGGRAPH_AES_KEY.encode()) not in (16, 24, 32):
    raise ImproperlyConfigured("LANGGRAPH_AES_KEY is invalid: an AES key is 16, 24 or 32 bytes")
# Values larger than this are not decoded for display; their size is shown.
DISPLAY_DECODE_LIMIT = env_size("DISPLAY_DECODE_LIMIT", 2_000_000)

# --- Maintenance ---------------------------------------------------------------
PRUNE_ACTIVE_WINDOW = env_duration("PRUNE_ACTIVE_WINDOW", units.parse_duration("10m"))
SWEEP_GRACE = env_duration("SWEEP_GRACE", units.parse_duration("24h"))

# --- Blob stores -----------------------------------------------------------------
# One reader for the console and the agent library (checkpoints/s3client.py).
try:
    _S3 = S3Settings.from_env()
except ValueError as e:
    raise ImproperlyConfigured(str(e)) from None
S3_BUCKET_NAME = _S3.bucket
AWS_REGION = _S3.region
S3_ENDPOINT_URL = _S3.endpoint_url
S3_FORCE_PATH_STYLE = _S3.path_style
S3_PREFIX = _S3.prefix
AWS_ACCESS_KEY_ID = _S3.access_key
AWS_SECRET_ACCESS_KEY = _S3.secret_key
AWS_SESSION_TOKEN = _S3.session_token
BLOB_ROOT = Path(env_str("BLOB_ROOT", str(VAR_DIR / "blobs"))).resolve()
PRESIGN_EXPIRES = env_int("PRESIGN_EXPIRES", 300, minimum=1, maximum=604800)
S3_CONNECT_TIMEOUT = _S3.connect_timeout
S3_READ_TIMEOUT = _S3.read_timeout
S3_MAX_ATTEMPTS = _S3.max_attempts
OFFLOAD_THRESHOLD = env_size("OFFLOAD_THRESHOLD", 1_000_000)

# --- Cache -------------------------------------------------------------------------
# Decoded checkpoint values and previews of offloaded/external objects
# (dashboard.snapshot_cache); also the tag browser's counts.
CACHE_URL = _env("CACHE_URL", "", lambda raw: (cache_config(raw), raw.strip())[1])
CACHES = {"default": cache_config(CACHE_URL)}
SNAPSHOT_CACHE_TTL = env_duration("SNAPSHOT_CACHE_TTL", units.parse_duration("1h"))
# Bytes of an object's content read for an inline preview (storage.previews); "show more" reads
# storage.previews.MORE_FACTOR times as much. Never more than that is held in memory.
PREVIEW_LIMIT = env_size("PREVIEW_LIMIT", 100_000)

# --- Task queue --------------------------------------------------------------
Q_BROKER = env_str("Q_BROKER", "")
Q_CLUSTER = {
    "name": "console",
    "workers": env_int("Q_WORKERS", 2, minimum=1),
    # A task is killed after `timeout` seconds and retried after `retry`;
    # retry must be longer so a slow run is never started twice.
    "timeout": env_int("Q_TIMEOUT", 3600, minimum=10),
    "retry": env_int("Q_TIMEOUT", 3600, minimum=10) + 600,
    "max_attempts": 1,
    "catch_up": False,
    "save_limit": 1000,
    "label": "Tasks",
}
if Q_BROKER.startswith(("redis://", "rediss://")):
    Q_CLUSTER["redis"] = redis_with_timeouts(Q_BROKER)
elif Q_BROKER in ("", "orm"):
    Q_CLUSTER["orm"] = "default"
else:
    raise ImproperlyConfigured(f"Q_BROKER={Q_BROKER!r} is invalid: use redis://... or leave it unset for the ORM")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "WARNING").upper()},
}
