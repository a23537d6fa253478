"""Settings of the web accounts: cookie and sign-up flags, the sign-in limit, the secret key."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from hub.config import Settings


def test_cookie_secure_and_open_signup_are_off_by_default_and_read_as_flags():
    default = Settings.from_env({})
    assert default.cookie_secure is False and default.open_signup is False
    assert default.sign_in_failures_per_minute == 10
    on = Settings.from_env({"LORASTACK_COOKIE_SECURE": "1", "LORASTACK_OPEN_SIGNUP": "true",
                            "LORASTACK_SIGN_IN_FAILURES_PER_MINUTE": "0"})
    assert on.cookie_secure is True and on.open_signup is True
    assert on.sign_in_failures_per_minute == 0
    assert Settings.from_env({"LORASTACK_COOKIE_SECURE": "0"}).cookie_secure is False
    with pytest.raises(SystemExit, match="LORASTACK_COOKIE_SECURE must be 1 or 0"):
        Settings.from_env({"LORASTACK_COOKIE_SECURE": "maybe"})


def test_processes_starting_at_once_agree_on_one_generated_key(tmp_path):
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: Settings(data_dir=tmp_path).resolved_secret_key(),
                            range(32)))
    assert len(keys) == 1 and len(keys.pop()) == 64
    assert [path.name for path in tmp_path.iterdir()] == ["secret_key"]  # no drafts left


def test_an_empty_secret_key_file_is_refused_rather_than_signing_with_nothing(tmp_path):
    (tmp_path / "secret_key").write_text("\n")
    with pytest.raises(SystemExit, match="is empty"):
        Settings(data_dir=tmp_path).resolved_secret_key()
    assert Settings(data_dir=tmp_path, secret_key="set").resolved_secret_key() == "set"
