"""Settings: the only module that reads LORASTACK_* environment variables."""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

MiB = 1024**2
GiB = 1024**3


@dataclass(frozen=True)
class Settings:
    """Typed, frozen server settings; build with `Settings.from_env()`."""

    data_dir: Path = Path("./var")
    database_url: str = ""
    storage_url: str = ""
    s3_endpoint_url: str | None = None
    # A store that accepts connections and never answers must cost seconds, not minutes:
    # each S3 request waits at most this long to connect and between two reads (seconds),
    # and is tried at most `s3_max_attempts` times in all.
    s3_connect_timeout: float = 5.0
    s3_read_timeout: float = 10.0
    s3_max_attempts: int = 2
    queue: str = "inline"
    broker_url: str | None = None
    max_upload_bytes: int = 10 * GiB
    # Every body but a publish's multipart upload is a small JSON object.
    max_json_bytes: int = 1 * MiB
    secret_key: str | None = None
    port: int = 8000
    # Presigned download URLs live this long (seconds): a URL handed out before an
    # adapter turned private keeps working until it expires, so it is kept short.
    presign_ttl: int = 60
    # The merge service: limits, workers and result lifetime.
    device: str = "auto"
    merge_attempts: int = 3
    merge_ttl_days: float = 7.0
    max_merge_sources: int = 16
    max_merge_rank: int = 1024
    max_merge_source_bytes: int = 64 * GiB
    max_active_merges: int = 4
    worker_cache_bytes: int = 20 * GiB
    # A running merge writes a heartbeat this often; one silent for `stale_seconds` is
    # handed out again (its worker died) by the sweep that runs every `sweep_seconds`.
    heartbeat_seconds: float = 5.0
    stale_seconds: float = 60.0
    sweep_seconds: float = 15.0
    # Rate limits, per minute (0 turns one off): failed authentications from one address
    # (past it, every request from there that carries a token is refused, so a valid token
    # cannot be guessed there either), and writes (POST, PATCH, DELETE) by one token.
    auth_failures_per_minute: int = 20
    writes_per_minute: int = 120
    # Where the limits count: memory:// holds one process's counts; when several processes
    # serve (LORASTACK_QUEUE=celery) they share the broker's Redis unless told otherwise.
    ratelimit_storage_url: str = ""
    # How many reverse proxies in front of the hub set X-Forwarded-For / -Proto: the
    # caller's address (rate limits, logs) is then taken from that header, never otherwise
    # (a client could write any address into it).
    trusted_proxies: int = 0
    # Failed sign-ins to the web pages per name a minute (0: off); each also counts
    # towards its address's auth_failures_per_minute.
    sign_in_failures_per_minute: int = 10
    # The web pages: session cookies marked Secure (sent over HTTPS only: the production
    # setting), and whether anyone may create an account at /signup.
    cookie_secure: bool = False
    open_signup: bool = False
    # How long a process may serve a catalog listing it computed earlier (seconds; 0: never).
    # Any catalog write ends it at once; only download counts can be this old in a listing.
    catalog_cache_seconds: int = 10

    @property
    def worker_cache_dir(self) -> Path:
        """Where workers keep source files fetched from the blob store, keyed by sha256."""
        return self.data_dir / "cache" / "sources"

    def __post_init__(self) -> None:
        data_dir = Path(self.data_dir)
        object.__setattr__(self, "data_dir", data_dir)
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{data_dir.resolve() / 'hub.db'}")
        object.__setattr__(self, "database_url", normalize_database_url(self.database_url))
        if not self.storage_url:
            object.__setattr__(self, "storage_url", f"file://{data_dir.resolve() / 'blobs'}")
        if not self.ratelimit_storage_url:
            shared = self.broker_url if self.queue == "celery" and self.broker_url else None
            object.__setattr__(self, "ratelimit_storage_url", shared or "memory://")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Read LORASTACK_* (and PORT) from `env` (default: the process environment)."""
        env = os.environ if env is None else env
        values: dict = {}
        if "LORASTACK_DATA_DIR" in env:
            values["data_dir"] = Path(env["LORASTACK_DATA_DIR"])
        for key, attr in (("LORASTACK_DATABASE_URL", "database_url"),
                          ("LORASTACK_STORAGE_URL", "storage_url"),
                          ("LORASTACK_S3_ENDPOINT_URL", "s3_endpoint_url"),
                          ("LORASTACK_QUEUE", "queue"),
                          ("LORASTACK_BROKER_URL", "broker_url"),
                          ("LORASTACK_RATELIMIT_STORAGE_URL", "ratelimit_storage_url"),
                          ("LORASTACK_SECRET_KEY", "secret_key")):
            if env.get(key):
                values[attr] = env[key]
        for key, attr in (("LORASTACK_MAX_UPLOAD_BYTES", "max_upload_bytes"),
                          ("LORASTACK_MAX_JSON_BYTES", "max_json_bytes"),
                          ("LORASTACK_PRESIGN_TTL_SECONDS", "presign_ttl")):
            if env.get(key):
                values[attr] = _positive_int(key, env[key])
        for key, attr in (("LORASTACK_AUTH_FAILURES_PER_MINUTE", "auth_failures_per_minute"),
                          ("LORASTACK_WRITES_PER_MINUTE", "writes_per_minute"),
                          ("LORASTACK_TRUSTED_PROXIES", "trusted_proxies"),
                          ("LORASTACK_SIGN_IN_FAILURES_PER_MINUTE",
                           "sign_in_failures_per_minute"),
                          ("LORASTACK_CATALOG_CACHE_SECONDS", "catalog_cache_seconds")):
            if env.get(key):
                values[attr] = _non_negative_int(key, env[key])
        for key, attr in (("LORASTACK_COOKIE_SECURE", "cookie_secure"),
                          ("LORASTACK_OPEN_SIGNUP", "open_signup")):
            if env.get(key):
                values[attr] = _flag(key, env[key])
        if env.get("PORT"):
            values["port"] = _positive_int("PORT", env["PORT"])
        if values.get("queue", "inline") not in ("inline", "celery"):
            raise SystemExit(f"LORASTACK_QUEUE must be inline or celery, got {values['queue']!r}")
        if env.get("LORASTACK_DEVICE"):
            values["device"] = parse_device(env["LORASTACK_DEVICE"])
        for key, attr in (("LORASTACK_MERGE_ATTEMPTS", "merge_attempts"),
                          ("LORASTACK_MAX_MERGE_SOURCES", "max_merge_sources"),
                          ("LORASTACK_MAX_MERGE_RANK", "max_merge_rank"),
                          ("LORASTACK_MAX_MERGE_SOURCE_BYTES", "max_merge_source_bytes"),
                          ("LORASTACK_MAX_ACTIVE_MERGES", "max_active_merges"),
                          ("LORASTACK_WORKER_CACHE_BYTES", "worker_cache_bytes"),
                          ("LORASTACK_S3_MAX_ATTEMPTS", "s3_max_attempts")):
            if env.get(key):
                values[attr] = _positive_int(key, env[key])
        for key, attr in (("LORASTACK_MERGE_TTL_DAYS", "merge_ttl_days"),
                          ("LORASTACK_HEARTBEAT_SECONDS", "heartbeat_seconds"),
                          ("LORASTACK_STALE_SECONDS", "stale_seconds"),
                          ("LORASTACK_SWEEP_SECONDS", "sweep_seconds"),
                          ("LORASTACK_S3_CONNECT_TIMEOUT", "s3_connect_timeout"),
                          ("LORASTACK_S3_READ_TIMEOUT", "s3_read_timeout")):
            if env.get(key):
                values[attr] = _positive_float(key, env[key])
        values.update(overrides)
        settings = cls(**values)
        if settings.heartbeat_seconds * 2 > settings.stale_seconds:
            # A merge is judged dead after stale_seconds without a heartbeat: with fewer than
            # two beats in that time every live merge would be handed out again.
            raise SystemExit(f"LORASTACK_STALE_SECONDS ({settings.stale_seconds:g}) must be at"
                             " least twice LORASTACK_HEARTBEAT_SECONDS"
                             f" ({settings.heartbeat_seconds:g})")
        return settings

    def with_overrides(self, **changes) -> "Settings":
        """A copy with some fields changed."""
        return replace(self, **changes)

    def resolved_secret_key(self) -> str:
        """The secret key; generated once into DATA_DIR when not set explicitly."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # Written whole under another name, then linked into place: two processes
            # starting at once agree on one key, and neither can read a half-written file.
            draft = path.with_name(f".secret_key.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
            try:
                os.link(draft, path)
            except FileExistsError:
                pass
            finally:
                draft.unlink()
        key = path.read_text().strip()
        if not key:
            # Signing sessions with an empty key would let anyone forge a sign-in cookie.
            raise SystemExit(f"{path} is empty: delete it (a new key is generated) or set"
                             " LORASTACK_SECRET_KEY")
        return key


def normalize_database_url(url: str) -> str:
    """Make a plain postgresql:// URL use psycopg 3, the driver we install."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def parse_device(raw: str) -> str:
    """auto, cpu, cuda or cuda:N (any case); SystemExit naming the variable otherwise."""
    value = raw.strip().lower()
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:")
                                             and value[5:].isdigit()):
        return value
    raise SystemExit(f"LORASTACK_DEVICE must be auto, cpu, cuda or cuda:N, got {raw!r}")


def _positive_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise SystemExit(f"{name} must be a positive number, got {raw!r}")
    return value


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"{name} must be 1 or 0, got {raw!r}")


def _non_negative_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise SystemExit(f"{name} must be 0 (off) or positive, got {raw!r}")
    return value


def _positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None
    if value <= 0:
        raise SystemExit(f"{name} must be positive, got {raw!r}")
    return value


def client_endpoint(env: Mapping[str, str] | None = None) -> str:
    """The hub URL the CLI talks to (LORASTACK_ENDPOINT)."""
    env = os.environ if env is None else env
    return env.get("LORASTACK_ENDPOINT", "http://127.0.0.1:8000").rstrip("/")


def client_token(env: Mapping[str, str] | None = None) -> str | None:
    """The bearer token the CLI sends (LORASTACK_TOKEN)."""
    env = os.environ if env is None else env
    return env.get("LORASTACK_TOKEN") or None
