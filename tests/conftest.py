"""Shared fixtures: the hub on both backends (SQLite + local, PostgreSQL + S3)."""
from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Iterator

import pytest

pytest_plugins = ["tests.support.moto_server"]

# Nothing may be fetched from a model hub: PEFT and transformers must not even try.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_ADMIN_URL = os.environ.get("LORASTACK_TEST_POSTGRES_URL",
                                    "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def need_service(name: str, error: Exception):
    """Outside CI a missing service skips (with the reason); under CI=true it fails."""
    message = f"{name} is not reachable: {error}"
    if IN_CI:
        pytest.fail(message + " (CI=true: services must be up)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_admin():
    """An engine on the PostgreSQL server's maintenance database (AUTOCOMMIT)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT",
                           connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # driver-specific connection errors
        need_service("PostgreSQL", exc)
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url(postgres_admin) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    from sqlalchemy import text

    name = f"lorastack_test_{uuid.uuid4().hex[:12]}"
    with postgres_admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with postgres_admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


BACKENDS = ["sqlite-local", "postgres-s3"]


@pytest.fixture(params=BACKENDS)
def settings(request, tmp_path: Path):
    """Settings for a fresh hub on each backend, its schema built by the migrations."""
    from hub.config import Settings
    from hub.db import upgrade

    data_dir = tmp_path / "data"
    if request.param == "sqlite-local":
        result = Settings(data_dir=data_dir, secret_key="test")
    else:
        database_url = request.getfixturevalue("postgres_url")
        bucket_url = request.getfixturevalue("s3_bucket_url")
        endpoint = request.getfixturevalue("moto_endpoint")
        result = Settings(data_dir=data_dir, secret_key="test", database_url=database_url,
                          storage_url=bucket_url, s3_endpoint_url=endpoint)
    upgrade(result.database_url)
    return result


@pytest.fixture
def app(settings):
    """The Flask app on `settings`."""
    from hub import create_app

    application = create_app(settings)
    application.testing = True
    yield application
    application.extensions["lorastack"].close()


@pytest.fixture
def client(app):
    """Flask's test client."""
    return app.test_client()


@pytest.fixture
def make_user(app):
    """Create a user and return a token: make_user(name, admin=False, scope='write')."""
    from hub.services.accounts import create_token, create_user

    db = app.extensions["lorastack"].db

    def _make(name: str, *, admin: bool = False, scope: str = "write") -> str:
        with db.session() as session:
            from sqlalchemy import select

            from hub.models import User

            if session.scalar(select(User).where(User.name == name)) is None:
                create_user(session, name, is_admin=admin)
            return create_token(session, name, scope=scope)

    return _make


@pytest.fixture
def sign_in(app, client):
    """sign_in(name): the test client carries that user's sign-in cookie, as the sign-in
    page writes it (a password is set first if the user has none); None signs out."""
    from sqlalchemy import select

    from hub.models import User
    from hub.services.accounts import session_stamp, set_password

    def _sign_in(name: str | None) -> None:
        with client.session_transaction() as cookie:
            cookie.clear()
            if name:
                with app.extensions["lorastack"].db.session() as session:
                    user = session.scalar(select(User).where(User.name == name))
                    if user.password_hash is None:
                        user = set_password(session, name, "correct horse battery")
                    cookie["uid"], cookie["stamp"] = user.id, session_stamp(user)

    return _sign_in


@pytest.fixture
def live_server(app) -> Iterator[str]:
    """The app served over real HTTP on a free port (threaded), for the CLI."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory) -> Path:
    """A real LoRA adapter saved by PEFT (tiny LLaMA, r=4 on q_proj and v_proj)."""
    from tests.support.adapters import save_lora

    return save_lora(tmp_path_factory.mktemp("lora"), seed=1)


@pytest.fixture(scope="session")
def other_lora_dir(tmp_path_factory) -> Path:
    """A second, different LoRA adapter (r=8 on q_proj, k_proj)."""
    from tests.support.adapters import save_lora

    return save_lora(tmp_path_factory.mktemp("lora2"), seed=2, r=8, alpha=16,
                     target_modules=("q_proj", "k_proj"))
