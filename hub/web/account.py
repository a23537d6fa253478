"""Accounts on the pages: sign in and out, sign up (when open), and one's API tokens.

The sign-in cookie is Flask's signed session: it holds the user's id and a digest of their
password hash (hub.services.accounts.session_stamp), so a new password ends every session.
"""
from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

from flask import flash, g, redirect, render_template, request, session, url_for

from hub.limits import count_signed_in_write, current_limits
from hub.bodies import SESSION_COOKIE, UPLOAD_ENDPOINTS
from hub.errors import HubError, InvalidRequest, NotFound, RateLimited
from hub.runtime import EXTENSION_KEY, current_hub
from hub.services import accounts
from hub.services.names import name_key
from hub.web import bp
from hub.web.csrf import check_csrf, csrf_token, new_token
from hub.web.errors import web_safe

SESSION_LIFETIME = timedelta(days=14)
WRONG_SIGN_IN = "Wrong name or password."
#: Posts that change nothing (the merge builder's plan preview, sent on each edit of the
#: form): not counted as writes.
READS_SENT_AS_POST = frozenset({"web.merge_plan_json"})


@bp.record_once
def _configure_sessions(state) -> None:
    """Cookie flags: never readable by scripts, not sent on cross-site posts, and only over
    HTTPS when LORASTACK_COOKIE_SECURE=1 (the production setting)."""
    settings = state.app.extensions[EXTENSION_KEY].settings
    state.app.config.update(SESSION_COOKIE_NAME=SESSION_COOKIE,
                            SESSION_COOKIE_HTTPONLY=True,
                            SESSION_COOKIE_SAMESITE="Lax",
                            SESSION_COOKIE_SECURE=settings.cookie_secure,
                            PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME)
    state.app.jinja_env.globals["csrf_token"] = csrf_token


@bp.before_request
def _before_page() -> None:
    """Who is signed in, then the CSRF check of every unsafe request (in that order: the
    check may read the form, which for a signed-in user's upload may be large), then the
    user's writes counted (after the check: another site's forged posts spend nothing)."""
    g.web_user = _signed_in_user()
    if request.endpoint in UPLOAD_ENDPOINTS:
        # Only for someone signed in: no one else gets a multi-GB body parsed.
        settings = current_hub().settings
        request.max_content_length = (settings.max_upload_bytes if g.web_user is not None
                                      else settings.max_json_bytes)
    check_csrf()
    if g.web_user is not None and request.endpoint not in READS_SENT_AS_POST:
        count_signed_in_write(g.web_user.id)


def _signed_in_user():
    user_id, stamp = session.get("uid"), session.get("stamp")
    if user_id is None:
        return None
    with current_hub().db.session() as db:
        user = accounts.session_user(db, user_id, stamp)
    if user is None:
        session.pop("uid", None)  # its password changed, or the user is gone
        session.pop("stamp", None)
    return user


def sign_in_redirect(back_to: str | None = None):
    """Send an anonymous visitor to the sign-in page, to come back to `back_to` (default:
    this page) after."""
    target = back_to or request.full_path.rstrip("?")
    return redirect(url_for("web.signin", next=target), code=303)


def _safe_next(target: str | None) -> str:
    """Only a path on this hub: never another site (an open redirect). Browsers drop tabs
    and newlines from a URL and read a backslash as a slash, so "/<tab>/evil" is "//evil"."""
    if (not target or not target.startswith("/") or "\\" in target
            or any(ord(char) <= 0x20 or ord(char) == 0x7F for char in target)
            or target.startswith("//")):
        return "/"
    parts = urlsplit(target)
    return "/" if parts.scheme or parts.netloc else target


@bp.route("/signin", methods=["GET", "POST"])
def signin():
    """The sign-in form; a wrong name and a wrong password get the same answer."""
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET":
        if g.web_user is not None:
            return redirect(next_url, code=303)
        return render_template("account/signin.html", next=next_url, name="",
                               open_signup=current_hub().settings.open_signup)
    name = request.form.get("name", "").strip()
    password = request.form.get("password", "")
    key = name_key(name)[:64] if name else "-"
    limits, address = current_limits(), request.remote_addr or "-"
    try:
        limits.refuse_blocked_sign_in(key, address)
    except RateLimited as error:
        page = render_template("account/signin.html", next=next_url, name=name,
                               error=error.detail)
        return page, 429, {"Retry-After": str(error.extra["retry_after"])}
    with current_hub().db.session() as db:
        user = accounts.check_password(db, name, password)
    if user is None:
        limits.count_failed_sign_in(key, address)
        return render_template("account/signin.html", next=next_url, name=name,
                               error=WRONG_SIGN_IN), 401
    _start_session(user)
    return redirect(next_url, code=303)


def _start_session(user) -> None:
    # A new session: whatever the cookie held before (a token an attacker planted, say)
    # is dropped, and the CSRF token changes with it.
    session.clear()
    session.permanent = True
    session["uid"] = user.id
    session["stamp"] = accounts.session_stamp(user)
    new_token()


@bp.post("/signout")
def signout():
    """Sign out (a POST with the CSRF token: a link elsewhere cannot sign anyone out)."""
    session.clear()
    return redirect("/", code=303)


@bp.route("/signup", methods=["GET", "POST"])
def signup():
    """Create an account with a password; only when LORASTACK_OPEN_SIGNUP=1."""
    if not current_hub().settings.open_signup:
        raise NotFound("There is no sign-up on this hub: ask its operator for an account.")
    if request.method == "GET":
        return render_template("account/signup.html", name="", errors={},
                               rule=accounts.PASSWORD_RULE)
    name = request.form.get("name", "").strip()
    password = request.form.get("password", "")
    errors: dict[str, str] = {}
    if password != request.form.get("confirm", ""):
        errors["confirm"] = "The two passwords differ; type the same password twice."
    else:
        try:
            with current_hub().db.session() as db:
                user = accounts.sign_up(db, name, password)
        except InvalidRequest as error:
            errors["password"] = error.detail
        except HubError as error:  # invalid_name, user_exists
            errors["name"] = web_safe(error).detail
    if errors:
        return render_template("account/signup.html", name=name, errors=errors,
                               rule=accounts.PASSWORD_RULE), 400
    _start_session(user)
    return redirect("/", code=303)


@bp.route("/settings/tokens", methods=["GET", "POST"])
def tokens():
    """One's API tokens: create one (shown once), see when each was last used."""
    if g.web_user is None:
        return sign_in_redirect(url_for("web.tokens"))
    created, status, error = None, 200, None
    if request.method == "POST":
        scope = request.form.get("scope", "")
        try:
            with current_hub().db.session() as db:
                created = (accounts.create_token(db, g.web_user.name, scope=scope), scope)
            status = 201
        except InvalidRequest as exc:
            error, status = exc.detail, 400
    with current_hub().db.session() as db:
        rows = accounts.list_tokens(db, g.web_user.id)
    response = render_template("account/tokens.html", tokens=rows, created=created,
                               error=error, scopes=accounts.SCOPES)
    # The page that shows a new token once must not be kept by a cache.
    return response, status, {"Cache-Control": "no-store"}


@bp.post("/settings/tokens/<prefix>/revoke")
def revoke_token(prefix: str):
    """Revoke one of one's tokens: the API refuses it from the next request on."""
    if g.web_user is None:
        return sign_in_redirect(url_for("web.tokens"))
    with current_hub().db.session() as db:
        accounts.revoke_token(db, prefix, user_id=g.web_user.id)
    flash(f"Revoked the token {prefix}…: it no longer works.")
    return redirect(url_for("web.tokens"), code=303)
