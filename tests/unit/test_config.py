"""Settings come from LORASTACK_* variables, with the embedded defaults."""
from __future__ import annotations

from pathlib import Path

import pytest

from hub.config import Settings, client_endpoint


def test_defaults_are_the_embedded_setup(tmp_path):
    settings = Settings.from_env({"LORASTACK_DATA_DIR": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path.resolve()}/hub.db"
    assert settings.storage_url == f"file://{tmp_path.resolve()}/blobs"
    assert settings.queue == "inline" and settings.port == 8000
    assert settings.max_upload_bytes == 10 * 1024**3


def test_plain_postgresql_urls_use_psycopg3():
    settings = Settings.from_env({"LORASTACK_DATABASE_URL": "postgresql://hub@db/hub"})
    assert settings.database_url == "postgresql+psycopg://hub@db/hub"


def test_numbers_are_checked():
    with pytest.raises(SystemExit, match="LORASTACK_MAX_UPLOAD_BYTES"):
        Settings.from_env({"LORASTACK_MAX_UPLOAD_BYTES": "lots"})
    assert Settings.from_env({"PORT": "9000"}).port == 9000


def test_secret_key_is_generated_once_into_the_data_dir(tmp_path):
    settings = Settings(data_dir=tmp_path)
    first = settings.resolved_secret_key()
    assert len(first) == 64 and Settings(data_dir=tmp_path).resolved_secret_key() == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_client_endpoint_default_and_override():
    assert client_endpoint({}) == "http://127.0.0.1:8000"
    assert client_endpoint({"LORASTACK_ENDPOINT": "http://hub:9000/"}) == "http://hub:9000"


def test_importing_hub_builds_nothing():
    import subprocess
    import sys

    code = ("import sys, hub, hub.cli; "
            "heavy = [m for m in ('torch', 'flask', 'sqlalchemy', 'boto3', 'peft') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], check=True).stdout
    assert out.strip() == "[]"


def test_merge_settings_are_read_and_checked():
    settings = Settings.from_env({"LORASTACK_QUEUE": "celery", "LORASTACK_DEVICE": "CUDA:1",
                                  "LORASTACK_MERGE_ATTEMPTS": "5",
                                  "LORASTACK_STALE_SECONDS": "30"})
    assert (settings.queue, settings.device, settings.merge_attempts,
            settings.stale_seconds) == ("celery", "cuda:1", 5, 30.0)
    for env, needle in (({"LORASTACK_QUEUE": "rabbit"}, "LORASTACK_QUEUE"),
                        ({"LORASTACK_DEVICE": "tpu"}, "LORASTACK_DEVICE"),
                        ({"LORASTACK_MERGE_TTL_DAYS": "-1"}, "LORASTACK_MERGE_TTL_DAYS"),
                        ({"LORASTACK_HEARTBEAT_SECONDS": "40"}, "at least twice")):
        with pytest.raises(SystemExit, match=needle):
            Settings.from_env(env)


def test_s3_timeouts_are_read_and_checked():
    settings = Settings.from_env({"LORASTACK_S3_CONNECT_TIMEOUT": "2.5",
                                  "LORASTACK_S3_READ_TIMEOUT": "30",
                                  "LORASTACK_S3_MAX_ATTEMPTS": "4"})
    assert (settings.s3_connect_timeout, settings.s3_read_timeout,
            settings.s3_max_attempts) == (2.5, 30.0, 4)
    with pytest.raises(SystemExit, match="LORASTACK_S3_READ_TIMEOUT"):
        Settings.from_env({"LORASTACK_S3_READ_TIMEOUT": "0"})
    with pytest.raises(SystemExit, match="LORASTACK_S3_MAX_ATTEMPTS"):
        Settings.from_env({"LORASTACK_S3_MAX_ATTEMPTS": "two"})


def test_signed_urls_are_short_lived_and_bodies_small_unless_set():
    settings = Settings.from_env({})
    assert settings.presign_ttl == 60 and settings.max_json_bytes == 1024 * 1024
    changed = Settings.from_env({"LORASTACK_PRESIGN_TTL_SECONDS": "30",
                                 "LORASTACK_MAX_JSON_BYTES": "4096"})
    assert (changed.presign_ttl, changed.max_json_bytes) == (30, 4096)
    with pytest.raises(SystemExit, match="LORASTACK_PRESIGN_TTL_SECONDS"):
        Settings.from_env({"LORASTACK_PRESIGN_TTL_SECONDS": "0"})


def test_rate_limits_are_read_zero_turns_one_off_and_processes_share_the_broker():
    settings = Settings.from_env({})
    assert (settings.auth_failures_per_minute, settings.writes_per_minute,
            settings.ratelimit_storage_url) == (20, 120, "memory://")
    changed = Settings.from_env({"LORASTACK_AUTH_FAILURES_PER_MINUTE": "0",
                                 "LORASTACK_WRITES_PER_MINUTE": "7"})
    assert (changed.auth_failures_per_minute, changed.writes_per_minute) == (0, 7)
    celery = Settings.from_env({"LORASTACK_QUEUE": "celery",
                                "LORASTACK_BROKER_URL": "redis://broker:6379/0"})
    assert celery.ratelimit_storage_url == "redis://broker:6379/0"
    own = Settings.from_env({"LORASTACK_QUEUE": "celery", "LORASTACK_BROKER_URL": "redis://b/0",
                             "LORASTACK_RATELIMIT_STORAGE_URL": "redis://limits/1"})
    assert own.ratelimit_storage_url == "redis://limits/1"
    with pytest.raises(SystemExit, match="LORASTACK_WRITES_PER_MINUTE"):
        Settings.from_env({"LORASTACK_WRITES_PER_MINUTE": "-1"})


def test_catalog_cache_seconds_default_to_ten_zero_turns_the_cache_off():
    assert Settings.from_env({}).catalog_cache_seconds == 10
    assert Settings.from_env({"LORASTACK_CATALOG_CACHE_SECONDS": "0"}).catalog_cache_seconds == 0
    with pytest.raises(SystemExit, match="LORASTACK_CATALOG_CACHE_SECONDS"):
        Settings.from_env({"LORASTACK_CATALOG_CACHE_SECONDS": "ten"})


def test_trusted_proxies_default_to_none_and_are_checked():
    assert Settings.from_env({}).trusted_proxies == 0
    assert Settings.from_env({"LORASTACK_TRUSTED_PROXIES": "2"}).trusted_proxies == 2
    with pytest.raises(SystemExit, match="LORASTACK_TRUSTED_PROXIES"):
        Settings.from_env({"LORASTACK_TRUSTED_PROXIES": "-1"})
