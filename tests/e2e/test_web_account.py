"""Accounts on the web pages: passwords, sign-in sessions and their cookies, CSRF, the
tokens page, sign-up, sign-in rate limits and the publish form, on both backends."""
from __future__ import annotations

import io
import re
import statistics
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.e2e.helpers import assert_problem, auth

PASSWORD = "correct horse battery"
BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
SCRIPT = {"Accept": "application/json"}


@pytest.fixture
def db(app):
    return app.extensions["lorastack"].db


@pytest.fixture
def make_account(db):
    """Create a user with a password: make_account(name, password=PASSWORD)."""
    from hub.services.accounts import create_user, set_password

    def _make(name: str, password: str = PASSWORD, *, admin: bool = False) -> None:
        with db.session() as session:
            create_user(session, name, is_admin=admin)
            set_password(session, name, password)

    return _make


def csrf_of(client, path: str = "/signin") -> str:
    page = client.get(path, headers=BROWSER).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def sign_in(client, name: str, password: str = PASSWORD, *, next_url: str | None = None,
            environ: dict | None = None):
    data = {"name": name, "password": password, "csrf_token": csrf_of(client)}
    if next_url is not None:
        data["next"] = next_url
    return client.post("/signin", data=data, headers=BROWSER, environ_base=environ or {})


def session_cookie(client) -> str | None:
    cookie = client.get_cookie("lorastack_session")
    return cookie.value if cookie else None


# --- passwords --------------------------------------------------------------------------

def test_passwords_are_stored_as_scrypt_hashes_and_checked_by_name(db, make_account):
    from sqlalchemy import select

    from hub.models import User
    from hub.services.accounts import check_password, create_user

    make_account("alice")
    with db.session() as session:
        create_user(session, "tokenonly")
        stored = session.scalar(select(User.password_hash).where(User.name == "alice"))
        assert stored.startswith("scrypt:") and PASSWORD not in stored
        assert check_password(session, "alice", PASSWORD).name == "alice"
        assert check_password(session, "Alice", PASSWORD).name == "alice"  # the name's key
        assert check_password(session, "alice", PASSWORD + "x") is None
        assert check_password(session, "nobody", PASSWORD) is None
        assert check_password(session, "tokenonly", "") is None


def test_the_password_rule_refuses_a_short_one_and_says_the_rule(db, make_account):
    from hub.errors import InvalidRequest
    from hub.services.accounts import MIN_PASSWORD_LENGTH, set_password

    make_account("alice")
    with db.session() as session, pytest.raises(InvalidRequest) as refused:
        set_password(session, "alice", "x" * (MIN_PASSWORD_LENGTH - 1))
    assert f"{MIN_PASSWORD_LENGTH} to" in refused.value.detail


def test_an_unknown_name_costs_the_same_scrypt_check_as_a_wrong_password(db, make_account):
    from hub.services.accounts import check_password

    make_account("alice")

    def timed(name: str) -> float:
        runs = []
        for _ in range(3):
            with db.session() as session:
                started = time.perf_counter()
                check_password(session, name, "wrong password here")
                runs.append(time.perf_counter() - started)
        return statistics.median(runs)

    timed("nobody")  # the dummy hash is made once, on first use
    known, unknown = timed("alice"), timed("nobody")
    # Without the dummy hash an unknown name answers in well under a millisecond.
    assert unknown > 0.4 * known and unknown > 0.005, (known, unknown)


def _cli_env(settings) -> dict:
    return {"LORASTACK_DATA_DIR": str(settings.data_dir),
            "LORASTACK_DATABASE_URL": settings.database_url,
            "LORASTACK_STORAGE_URL": settings.storage_url,
            "LORASTACK_S3_ENDPOINT_URL": settings.s3_endpoint_url or ""}


def test_cli_creates_a_user_with_a_prompted_password_and_sets_a_new_one(settings, db):
    from hub.cli import main
    from hub.services.accounts import check_password

    runner = CliRunner()
    result = runner.invoke(main, ["users", "create", "alice", "--password"],
                           input=f"short\n{PASSWORD}\n{PASSWORD}\n", env=_cli_env(settings))
    assert result.exit_code == 0, result.output
    assert "10 to 1024 characters" in result.output  # the short one was asked again
    assert PASSWORD not in result.output  # hidden input
    assert result.output.strip().splitlines()[-1].startswith("lst_")
    with db.session() as session:
        assert check_password(session, "alice", PASSWORD) is not None
    new = "another long password"
    result = runner.invoke(main, ["users", "set-password", "alice"],
                           input=f"{new}\nmistyped password\n{new}\n{new}\n",
                           env=_cli_env(settings))
    assert result.exit_code == 0, result.output
    assert "do not match" in result.output
    with db.session() as session:
        assert check_password(session, "alice", new) is not None
        assert check_password(session, "alice", PASSWORD) is None
    missing = runner.invoke(main, ["users", "set-password", "nobody"], input="",
                            env=_cli_env(settings))
    assert missing.exit_code == 1 and "(not_found)" in missing.output
    assert "Password" not in missing.output  # refused before asking
    taken = runner.invoke(main, ["users", "create", "ALICE", "--password"], input="",
                          env=_cli_env(settings))
    assert taken.exit_code == 1 and "(user_exists)" in taken.output
    assert "Password" not in taken.output


# --- sign in, sign out, cookies ---------------------------------------------------------

def test_sign_in_sets_an_httponly_samesite_lax_cookie_and_signs_out_by_post(client,
                                                                             make_account):
    make_account("alice")
    response = sign_in(client, "alice", next_url="/settings/tokens")
    assert response.status_code == 303 and response.headers["Location"] == "/settings/tokens"
    cookie = next(value for value in response.headers.getlist("Set-Cookie")
                  if value.startswith("lorastack_session="))
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert "httponly" in flags and "samesite=lax" in flags and "secure" not in flags
    page = client.get("/settings/tokens", headers=BROWSER)
    assert page.status_code == 200 and "alice" in page.get_data(as_text=True)
    # A GET never signs out (the owner page route answers it: no such owner).
    assert client.get("/signout").status_code in (404, 405)
    assert client.get("/settings/tokens", headers=BROWSER).status_code == 200
    token = csrf_of(client, "/settings/tokens")
    assert client.post("/signout", data={"csrf_token": token}).status_code == 303
    assert client.get("/settings/tokens").status_code == 303


def test_cookie_is_secure_when_lorastack_cookie_secure_is_set(settings):
    from hub import create_app
    from hub.config import Settings

    assert Settings.from_env({"LORASTACK_COOKIE_SECURE": "1"}).cookie_secure is True
    app = create_app(settings.with_overrides(cookie_secure=True))
    try:
        response = app.test_client().get("/signin")
        cookie = response.headers["Set-Cookie"].lower()
        assert "; secure" in cookie and "httponly" in cookie and "samesite=lax" in cookie
    finally:
        app.extensions["lorastack"].close()


def test_wrong_name_and_wrong_password_get_the_same_answer(client, make_account):
    make_account("alice")
    wrong_password = sign_in(client, "alice", "not the password")
    unknown_name = sign_in(client, "nobody", PASSWORD)
    assert wrong_password.status_code == unknown_name.status_code == 401
    texts = [r.get_data(as_text=True) for r in (wrong_password, unknown_name)]
    assert all("Wrong name or password." in text for text in texts)
    assert re.sub(r'value="[^"]*"', "", texts[0]) == re.sub(r'value="[^"]*"', "", texts[1])


def test_sign_in_starts_a_new_session_and_the_old_csrf_token_is_refused(client, make_account):
    make_account("alice")
    before_token = csrf_of(client)
    before_cookie = session_cookie(client)
    assert sign_in(client, "alice").status_code == 303
    assert session_cookie(client) != before_cookie
    refused = client.post("/settings/tokens", data={"scope": "read", "csrf_token": before_token},
                          headers=BROWSER)
    assert refused.status_code == 403


def test_next_never_leads_to_another_site(client, make_account):
    make_account("alice")
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example",
                   "/\t/evil.example", "/\n/evil.example"):
        response = sign_in(client, "alice", next_url=target)
        assert response.headers["Location"] == "/", target
        client.post("/signout", data={"csrf_token": csrf_of(client, "/settings/tokens")})


def test_a_new_password_ends_the_sessions_signed_in_with_the_old_one(client, db, make_account):
    from hub.services.accounts import set_password

    make_account("alice")
    sign_in(client, "alice")
    assert client.get("/settings/tokens").status_code == 200
    with db.session() as session:
        set_password(session, "alice", "a brand new password")
    assert client.get("/settings/tokens").status_code == 303


# --- CSRF and the API -------------------------------------------------------------------

def test_a_form_post_without_the_csrf_token_is_refused_and_with_it_accepted(client,
                                                                             make_account):
    make_account("alice")
    sign_in(client, "alice")
    without = client.post("/settings/tokens", data={"scope": "read"}, headers=BROWSER)
    assert without.status_code == 403
    wrong = client.post("/settings/tokens", data={"scope": "read", "csrf_token": "forged"},
                        headers=BROWSER)
    assert wrong.status_code == 403
    assert client.post("/signout").status_code == 403  # sign-out is a form too
    token = csrf_of(client, "/settings/tokens")
    assert client.post("/settings/tokens", data={"scope": "read", "csrf_token": token},
                       headers=BROWSER).status_code == 201
    header = client.post("/settings/tokens", data={"scope": "read"}, headers={
        **BROWSER, "X-CSRF-Token": token})
    assert header.status_code == 201


def test_a_sign_in_form_without_the_csrf_token_is_refused(client, make_account):
    make_account("alice")
    response = client.post("/signin", data={"name": "alice", "password": PASSWORD})
    assert response.status_code == 403
    assert client.get("/settings/tokens").status_code == 303  # not signed in


def test_a_session_cookie_never_authorizes_an_api_write(client, make_account, make_user,
                                                        lora_dir: Path):
    make_account("alice")
    token = make_user("alice")
    sign_in(client, "alice")
    assert client.get("/settings/tokens").status_code == 200  # signed in
    files = [(io.BytesIO(path.read_bytes()), path.name) for path in sorted(lora_dir.iterdir())]
    publish = client.post("/api/v1/adapters/alice/cookie/versions",
                          data={"version": "1.0.0", "license": "mit", "files": files},
                          content_type="multipart/form-data")
    assert_problem(publish, 401, "unauthorized")
    assert_problem(client.delete(f"/api/v1/tokens/{token[:12]}"), 401, "unauthorized")
    assert_problem(client.get("/api/v1/whoami"), 401, "unauthorized")
    assert client.get("/api/v1/whoami", headers=auth(token)).status_code == 200


# --- sign-up ----------------------------------------------------------------------------

def test_signup_is_a_404_unless_open_signup_is_set(client):
    assert client.get("/signup", headers=BROWSER).status_code == 404
    assert client.post("/signup", data={"csrf_token": csrf_of(client)}).status_code == 404


def test_open_signup_creates_an_account_and_signs_it_in(settings, make_account):
    from hub import create_app

    make_account("alice")
    app = create_app(settings.with_overrides(open_signup=True))
    try:
        client = app.test_client()
        assert client.get("/signup").status_code == 200

        def post(name: str, password: str, confirm: str | None = None):
            return client.post("/signup", headers=BROWSER, data={
                "name": name, "password": password, "confirm": confirm or password,
                "csrf_token": csrf_of(client, "/signup")})

        taken = post("Alice", "a long enough password")
        assert taken.status_code == 400 and 'id="name-error"' in taken.get_data(as_text=True)
        short = post("bob", "short")
        assert short.status_code == 400 and 'id="password-error"' in short.get_data(as_text=True)
        differ = post("bob", "a long enough password", "another long password")
        assert differ.status_code == 400 and 'id="confirm-error"' in differ.get_data(as_text=True)
        assert post("bob", "a long enough password").status_code == 303
        assert "bob" in client.get("/settings/tokens").get_data(as_text=True)
    finally:
        app.extensions["lorastack"].close()


# --- the tokens page --------------------------------------------------------------------

def test_tokens_page_creates_a_token_shown_once_lists_it_and_revokes_it(client, make_account):
    make_account("alice")
    sign_in(client, "alice")
    created = client.post("/settings/tokens", headers=BROWSER, data={
        "scope": "read", "csrf_token": csrf_of(client, "/settings/tokens")})
    assert created.status_code == 201
    assert created.headers["Cache-Control"] == "no-store"
    token = re.search(r'id="new-token" type="text" readonly value="(lst_[^"]+)"',
                      created.get_data(as_text=True)).group(1)
    whoami = client.get("/api/v1/whoami", headers=auth(token)).get_json()
    assert whoami["name"] == "alice" and whoami["scopes"] == ["read"]
    listing = client.get("/settings/tokens").get_data(as_text=True)
    assert token not in listing and token[:12] in listing
    row = listing[listing.index(token[:12]):]
    row = row[:row.index("</tr>")]
    assert "never" not in row and "read" in row  # last used: just now, by whoami
    revoked = client.post(f"/settings/tokens/{token[:12]}/revoke", headers=BROWSER,
                          data={"csrf_token": csrf_of(client, "/settings/tokens")})
    assert revoked.status_code == 303
    assert "no longer works" in client.get("/settings/tokens").get_data(as_text=True)
    assert_problem(client.get("/api/v1/whoami", headers=auth(token)), 401, "unauthorized")


def test_tokens_page_cannot_revoke_another_users_token(client, make_account, make_user):
    make_account("alice")
    bob_token = make_user("bob")
    sign_in(client, "alice")
    response = client.post(f"/settings/tokens/{bob_token[:12]}/revoke", headers=BROWSER,
                           data={"csrf_token": csrf_of(client, "/settings/tokens")})
    assert response.status_code == 404
    assert client.get("/api/v1/whoami", headers=auth(bob_token)).status_code == 200


# --- sign-in rate limits ----------------------------------------------------------------

ATTACKER, NEIGHBOUR = {"REMOTE_ADDR": "203.0.113.7"}, {"REMOTE_ADDR": "198.51.100.9"}


def test_failed_sign_ins_are_limited_per_name_and_per_address(settings, make_account):
    from hub import create_app

    make_account("alice")
    make_account("carol")
    app = create_app(settings.with_overrides(sign_in_failures_per_minute=3,
                                             auth_failures_per_minute=5))
    try:
        client = app.test_client()
        for _ in range(3):
            assert sign_in(client, "alice", "wrong password!", environ=ATTACKER).status_code == 401
        # The name is spent: even the right password, even from elsewhere, waits.
        for environ in (ATTACKER, NEIGHBOUR):
            blocked = sign_in(client, "alice", environ=environ)
            assert blocked.status_code == 429, environ
            assert 1 <= int(blocked.headers["Retry-After"]) <= 60
            assert "Too many failed sign-ins" in blocked.get_data(as_text=True)
        # The address has two failures left, for any name; then it is spent too.
        for name in ("bob", "dave"):
            assert sign_in(client, name, "wrong password!", environ=ATTACKER).status_code == 401
        blocked = sign_in(client, "carol", environ=ATTACKER)
        assert blocked.status_code == 429 and "Retry-After" in blocked.headers
        assert sign_in(client, "carol", environ=NEIGHBOUR).status_code == 303
    finally:
        app.extensions["lorastack"].close()


# --- the publish form -------------------------------------------------------------------

def form_files(directory: Path, **replace: bytes) -> list:
    files = {path.name: path.read_bytes() for path in sorted(directory.iterdir())}
    files.update(replace)
    return [(io.BytesIO(content), name) for name, content in files.items()]


def publish_form(client, directory: Path | None, *, headers=BROWSER, csrf: bool = True,
                 replace: dict | None = None, **fields):
    data = {"name": "first", "version": "1.0.0", "license": "apache-2.0",
            "description": "A test adapter.", "tags": "chat, code", "visibility": "public",
            **fields}
    if csrf:
        data["csrf_token"] = csrf_of(client, "/new")
    if directory is not None:
        data["files"] = form_files(directory, **(replace or {}))
    return client.post("/new", data=data, headers=headers, content_type="multipart/form-data")


def field_error(page: str, field: str) -> str:
    match = re.search(rf'<p class="field-error" id="{field}-error"[^>]*>([^<]*)</p>', page)
    return match.group(1) if match else ""


def test_publish_page_needs_a_sign_in_and_takes_no_large_body_from_anyone_else(client,
                                                                             settings):
    response = client.get("/new")
    assert response.status_code == 303 and response.headers["Location"] == "/signin?next=/new"
    # Refused by its length before a byte of it is read (a body that was read would be
    # refused for its missing CSRF token, a 403).
    big = io.BytesIO(b"\0" * (settings.max_json_bytes + 1))
    response = client.post("/new", data={"files": [(big, "adapter_model.safetensors")]},
                           content_type="multipart/form-data")
    assert response.status_code == 303 and response.headers["Location"] == "/signin?next=/new"


def test_publish_form_publishes_through_the_publish_service(client, make_account, lora_dir):
    make_account("alice")
    sign_in(client, "alice")
    page = client.get("/new").get_data(as_text=True)
    assert '<option value="cc-by-sa-4.0">' in page and '<option value="other">' in page
    response = publish_form(client, lora_dir, visibility="private")
    assert response.status_code == 303, response.get_data(as_text=True)
    assert response.headers["Location"] == "/alice/first/v/1.0.0"
    assert client.get("/api/v1/adapters/alice/first").status_code == 404  # private
    token = client.post("/settings/tokens", headers=BROWSER, data={
        "scope": "read", "csrf_token": csrf_of(client, "/settings/tokens")})
    token = re.search(r'value="(lst_[^"]+)"', token.get_data(as_text=True)).group(1)
    body = client.get("/api/v1/adapters/alice/first", headers=auth(token)).get_json()
    assert body["tags"] == ["chat", "code"] and body["description"] == "A test adapter."
    assert body["license"] == "apache-2.0" and body["versions"][0]["version"] == "1.0.0"
    # The page's script gets JSON: the same files again are the same version.
    again = publish_form(client, lora_dir, headers=SCRIPT)
    assert again.status_code == 200 and again.get_json() == {
        "adapter": "alice/first", "version": "1.0.0", "url": "/alice/first/v/1.0.0",
        "created": False}


def test_a_refused_upload_comes_back_with_its_error_beside_the_files(client, make_account,
                                                                     lora_dir):
    make_account("alice")
    sign_in(client, "alice")
    damaged = {"adapter_model.safetensors": b"\x00" * 64}
    page = publish_form(client, lora_dir, replace=damaged)
    assert page.status_code == 422
    text = page.get_data(as_text=True)
    assert "safetensors" in field_error(text, "files")
    assert 'value="first"' in text and 'value="1.0.0"' in text  # what was typed stays
    script = publish_form(client, lora_dir, headers=SCRIPT, replace=damaged)
    assert script.mimetype == "application/problem+json" and script.status_code == 422
    body = script.get_json()
    assert body["code"] == "invalid_safetensors" and set(body["errors"]) == {"files"}


def test_publish_form_puts_each_field_error_beside_its_field(client, make_account, lora_dir):
    make_account("alice")
    sign_in(client, "alice")
    response = publish_form(client, lora_dir, headers=SCRIPT, name="bad name", version="latest",
                            license="other", license_name="Mine", license_link="ftp://x",
                            tags="ok, -bad", visibility="secret")
    body = response.get_json()
    assert response.status_code == 400 and body["code"] == "invalid_name"
    assert set(body["errors"]) == {"name", "version", "license_link", "tags", "visibility"}
    unknown = publish_form(client, lora_dir, headers=SCRIPT, license="nonsense").get_json()
    assert unknown["code"] == "unknown_license" and set(unknown["errors"]) == {"license"}
    assert publish_form(client, lora_dir).status_code == 303
    taken = publish_form(client, lora_dir, replace={"README.md": b"# changed\n"})
    assert taken.status_code == 409 and "immutable" in field_error(
        taken.get_data(as_text=True), "version")
    nothing = publish_form(client, None, version="2.0.0")
    assert nothing.status_code == 400 and field_error(nothing.get_data(as_text=True), "files")


def test_publish_form_without_the_csrf_token_is_refused(client, make_account, lora_dir):
    make_account("alice")
    sign_in(client, "alice")
    assert publish_form(client, lora_dir, csrf=False).status_code == 403
    assert client.get("/api/v1/adapters/alice/first").status_code == 404


def test_an_upload_over_the_limit_is_413_beside_the_files(settings, make_account, lora_dir):
    from hub import create_app

    make_account("alice")
    app = create_app(settings.with_overrides(max_upload_bytes=1024))
    try:
        client = app.test_client()
        sign_in(client, "alice")
        response = publish_form(client, lora_dir)
        assert response.status_code == 413
        assert "LORASTACK_MAX_UPLOAD_BYTES" in field_error(response.get_data(as_text=True),
                                                           "files")
        script = publish_form(client, lora_dir, headers=SCRIPT)
        assert script.status_code == 413 and script.get_json()["code"] == "file_too_large"
    finally:
        app.extensions["lorastack"].close()


@pytest.mark.parametrize("content_type, body", [
    ("multipart/form-data", b"name=alice"),  # no boundary
    ("multipart/form-data; boundary=x", b"--x\r\nnot a header\r\n\r\n"),  # a garbled part
])
def test_a_form_that_is_not_valid_multipart_is_a_400_page_never_a_500(client, make_account,
                                                                      content_type, body):
    make_account("alice")
    for path in ("/signin", "/settings/tokens"):
        response = client.post(path, data=body, content_type=content_type, headers=BROWSER)
        assert response.status_code == 400, (path, response.status_code)
        assert response.mimetype == "text/html"
        assert "not valid multipart/form-data" in response.get_data(as_text=True)
    sign_in(client, "alice")
    response = client.post("/new", data=body, content_type=content_type,
                           headers={**BROWSER, "X-CSRF-Token": csrf_of(client, "/new")})
    assert response.status_code == 400, response.status_code


def test_a_storage_outage_on_the_pages_hides_its_cause_from_a_signed_in_user(app, client,
                                                                            make_account,
                                                                            lora_dir,
                                                                            monkeypatch):
    from hub.errors import StorageUnavailable

    internal = "s3://internal-bucket at 10.1.2.3:9000"

    def unreachable(*_args, **_kwargs):
        raise StorageUnavailable(f"could not write blob to {internal}: timed out")

    monkeypatch.setattr(app.extensions["lorastack"].store, "put_file", unreachable)
    make_account("alice")
    sign_in(client, "alice")
    page = publish_form(client, lora_dir)
    assert page.status_code == 503
    assert internal not in page.get_data(as_text=True)
    assert "try again later" in page.get_data(as_text=True)
    script = publish_form(client, lora_dir, headers=SCRIPT)
    problem = assert_problem(script, 503, "storage_unavailable")
    assert internal not in script.get_data(as_text=True), problem
    # An admin of the hub is its operator: the cause is theirs to see.
    make_account("root", admin=True)
    client.post("/signout", data={"csrf_token": csrf_of(client, "/new")})
    sign_in(client, "root")
    assert internal in publish_form(client, lora_dir, headers=SCRIPT).get_json()["detail"]
