"""Users, passwords and tokens: tokens are random, shown once, and stored as their sha256;
passwords are stored as werkzeug's scrypt hashes."""
from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from datetime import timedelta
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from hub.errors import InvalidRequest, NotFound, Unauthorized, UserExists
from hub.models import Token, User, utcnow
from hub.services.names import LOOK_ALIKE_RULE, check_user_name, name_key

SCOPES = ("read", "write")
LAST_USED_RESOLUTION = timedelta(minutes=1)
TOKEN_PREFIX = "lst_"
#: Every token create_token makes: the prefix, then token_urlsafe(32)'s characters. The
#: server's gate (hub.bodies) refuses a large body whose bearer header is not one.
TOKEN_SHAPE = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{43}")
# What is kept in clear to name a token (list, revoke): 8 random characters, 48 of its 256
# bits, enough that one user's prefixes do not collide. Older tokens keep 4.
SHOWN_PREFIX = len(TOKEN_PREFIX) + 8
# The password rule, checked here only: the CLI, the sign-up page and set-password all ask.
MIN_PASSWORD_LENGTH = 10
# scrypt reads the whole password; a cap keeps one request from costing more than a page.
MAX_PASSWORD_LENGTH = 1024
PASSWORD_RULE = (f"a password needs {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH}"
                 " characters (a few words make a long one easy to remember)")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user and what their token allows."""

    user_id: int
    name: str
    is_admin: bool
    scopes: tuple[str, ...]

    def can_write(self) -> bool:
        """True when the token carries the write scope."""
        return "write" in self.scopes

    def owns(self, owner_name: str) -> bool:
        """True when this caller may act as `owner_name` (itself, or an admin)."""
        return self.is_admin or self.name == owner_name


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_user_name_free(session: Session, name: str) -> None:
    """InvalidName for a name outside the pattern, UserExists for a taken one (or one that
    looks like a taken one)."""
    check_user_name(name)
    existing = session.scalar(select(User.name).where(User.name_key == name_key(name)))
    if existing == name:
        raise UserExists(f"The user {name!r} already exists.")
    if existing is not None:
        raise UserExists(f"The user {name!r} looks like the existing user {existing!r}"
                         f" ({LOOK_ALIKE_RULE}); choose another name.")


def create_user(session: Session, name: str, *, is_admin: bool = False) -> User:
    """Create a user; UserExists if the name is taken."""
    check_user_name_free(session, name)
    user = User(name=name, is_admin=is_admin)
    session.add(user)
    try:
        session.flush()
    except IntegrityError:
        raise UserExists(f"The user {name!r} already exists.") from None
    return user


def create_token(session: Session, user_name: str, *, scope: str = "write") -> str:
    """Create a token for `user_name` and return it; only its hash is stored."""
    if scope not in SCOPES:
        raise InvalidRequest(f"Unknown scope {scope!r}: use 'read' or 'write'.")
    user = session.scalar(select(User).where(User.name == user_name))
    if user is None:
        raise NotFound(f"No user named {user_name!r}; create it with"
                       " `lorastack users create NAME`.")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(Token(user_id=user.id, token_hash=hash_token(token),
                      prefix=token[:SHOWN_PREFIX], scope=scope))
    session.flush()
    return token


def authenticate(session: Session, token: str) -> Principal:
    """The principal a bearer token stands for; Unauthorized if it is unknown."""
    row = session.execute(
        select(Token, User).join(User, Token.user_id == User.id)
        .where(Token.token_hash == hash_token(token), Token.revoked.is_(False))
    ).first()
    if row is None:
        raise Unauthorized("The token is not valid. Create one with"
                           " `lorastack tokens create USER`.")
    token_row, user = row
    now = utcnow()
    # Refresh at most once a minute: a write on every request would serialise readers
    # on SQLite for a timestamp nobody needs to the second.
    if token_row.last_used_at is None or now - token_row.last_used_at > LAST_USED_RESOLUTION:
        token_row.last_used_at = now
    scopes = ("read", "write") if token_row.scope == "write" else ("read",)
    return Principal(user_id=user.id, name=user.name, is_admin=user.is_admin, scopes=scopes)


def authenticate_header(session: Session, header: str, *, how: str = "") -> Principal:
    """The principal an `Authorization: Bearer <token>` header stands for; Unauthorized for
    another form of header (`how` adds a surface's own way to send it) or an unknown token."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Send the token as `Authorization: Bearer <token>`"
                           + (f" ({how})." if how else "."))
    return authenticate(session, token.strip())


def list_tokens(session: Session, user_id: int) -> list[Token]:
    """The user's tokens that are not revoked, oldest first."""
    return list(session.scalars(select(Token).where(Token.user_id == user_id,
                                                    Token.revoked.is_(False))
                                .order_by(Token.created_at, Token.id)))


def revoke_token(session: Session, prefix: str, *, user_id: int | None = None) -> Token:
    """Revoke the one live token shown as `prefix` (only among `user_id`'s when given).

    Authentication reads the revoked flag on every request, so the token is refused (401)
    from the commit on.
    """
    query = select(Token).where(Token.prefix == prefix, Token.revoked.is_(False))
    if user_id is not None:
        query = query.where(Token.user_id == user_id)
    found = list(session.scalars(query.limit(2)))
    if not found:
        raise NotFound(f"No token {prefix!r} to revoke; `lorastack tokens list USER` shows"
                       " them." if user_id is None else
                       f"You have no token {prefix!r}; GET /api/v1/tokens lists yours.")
    if len(found) > 1:
        raise InvalidRequest(f"Several tokens are shown as {prefix!r}; revoke them through"
                             " their owners' GET /api/v1/tokens, or create new ones.")
    found[0].revoked = True
    session.flush()
    return found[0]


def check_new_password(password: object) -> str:
    """`password` if it follows PASSWORD_RULE; InvalidRequest saying the rule otherwise."""
    if not isinstance(password, str) or not (
            MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH):
        got = len(password) if isinstance(password, str) else 0
        raise InvalidRequest(f"This password has {got} characters: {PASSWORD_RULE}.")
    return password


def find_user(session: Session, name: object) -> User | None:
    """The user whose name is `name`, or a look-alike of it (the key is unique), or None."""
    if not isinstance(name, str) or not name or len(name) > 64:
        return None
    return session.scalar(select(User).where(User.name_key == name_key(name)))


def set_password(session: Session, user_name: str, password: str) -> User:
    """Give `user_name` a new password (scrypt); every session signed in before ends."""
    check_new_password(password)
    user = session.scalar(select(User).where(User.name == user_name))
    if user is None:
        raise NotFound(f"No user named {user_name!r}; create it with"
                       " `lorastack users create NAME --password`.")
    user.password_hash = generate_password_hash(password, method="scrypt")
    session.flush()
    return user


@functools.cache
def _dummy_hash() -> str:
    return generate_password_hash(secrets.token_urlsafe(16), method="scrypt")


def check_password(session: Session, name: str, password: str) -> User | None:
    """The user when `password` is theirs, else None.

    An unknown name, a user without a password and a wrong password take the same time (a
    scrypt check runs against a dummy hash), so the answer's timing does not tell which
    names exist; werkzeug compares the digests in constant time.
    """
    user = find_user(session, name)
    stored = user.password_hash if user is not None else None
    if not isinstance(password, str):
        password = ""
    matches = check_password_hash(stored or _dummy_hash(), password[:MAX_PASSWORD_LENGTH + 1])
    return user if matches and stored else None


def session_stamp(user: User) -> str:
    """What a sign-in cookie carries of the password hash (a digest of it): a new password
    ends every session signed in with the old one."""
    return hashlib.sha256((user.password_hash or "").encode()).hexdigest()[:32]


def session_user(session: Session, user_id: object, stamp: object) -> User | None:
    """The user a sign-in cookie names, while its password is the one it signed in with."""
    if not isinstance(user_id, int) or not isinstance(stamp, str):
        return None
    user = session.get(User, user_id)
    if user is None or user.password_hash is None:
        return None
    return user if hmac.compare_digest(session_stamp(user), stamp) else None


def web_principal(user: User) -> Principal:
    """A user signed in with their password acts with both scopes, as their write token."""
    return Principal(user_id=user.id, name=user.name, is_admin=user.is_admin,
                     scopes=("read", "write"))


def sign_up(session: Session, name: str, password: str) -> User:
    """Create a user with a password (the open sign-up page); the rules of both apply."""
    check_new_password(password)
    create_user(session, name)
    return set_password(session, name, password)
