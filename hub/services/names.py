"""Names, version labels and metadata: the API.md patterns, checked in one place."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.errors import InvalidName, InvalidRequest, InvalidVersion
from hub.formats.text import MAX_DESCRIPTION, unstorable_char
from hub.models import Adapter

# Hugging Face-like: starts alphanumeric; letters, digits, '.', '_', '-'; no '..'.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,38}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,63}$")
RESERVED_VERSIONS = {"latest"}
# The web pages live at /{owner} beside these paths: a user with one of these names would
# shadow a page (or be shadowed by one). Look-alikes are refused too (name_key).
RESERVED_USER_NAMES = frozenset({
    "about", "account", "admin", "api", "assets", "docs", "explore", "health", "help",
    "login", "logout", "merge", "merges", "metrics", "new", "register", "search", "settings",
    "signin", "signout", "signup", "static", "tokens", "users",
})
VISIBILITIES = ("public", "private")
MAX_TAGS = 32


# Names are ASCII (the patterns below), so ASCII's look-alikes are the ones to fold: capital
# I reads as small l and 1, and with case ignored that makes i, I, l, L and 1 one letter;
# O, o and 0 another.
_LOOK_ALIKES = str.maketrans({"i": "l", "1": "l", "0": "o"})
_SEPARATORS = re.compile(r"[-_.]+")


def name_key(name: str) -> str:
    """What two user or adapter names must not share: case ignored, look-alike letters
    folded (`Alice`, `AIice`, `A1ice` are `alice`) and each run of '-', '_', '.' made one
    '-' (PyPI's rule for project names), so no name can pass for another."""
    return _SEPARATORS.sub("-", name.lower().translate(_LOOK_ALIKES))


_RESERVED_KEYS = frozenset(name_key(name) for name in RESERVED_USER_NAMES)

LOOK_ALIKE_RULE = ("names are unique regardless of case, of '-', '_' and '.', and of the"
                   " look-alikes I, l and 1 or O and 0")


def check_adapter_name_free(session: Session, owner_id: int, owner: str, name: str) -> None:
    """InvalidName when the owner already has an adapter that `name` is a look-alike of."""
    existing = session.scalar(select(Adapter.name).where(Adapter.owner_id == owner_id,
                                                         Adapter.name_key == name_key(name)))
    if existing is not None and existing != name:
        raise InvalidName(f"{owner}/{name} looks like the existing adapter {owner}/{existing}"
                          f" ({LOOK_ALIKE_RULE}): publish to {owner}/{existing} or choose"
                          " another name.")


def check_user_name(name: str) -> str:
    """Return `name` if it is a valid user (owner) name, else raise InvalidName."""
    if not isinstance(name, str) or not USER_RE.fullmatch(name):
        raise InvalidName(f"Invalid user name {name!r}: use 1-39 letters, digits, '-' or '_',"
                          " starting with a letter or digit.")
    if name_key(name) in _RESERVED_KEYS:
        raise InvalidName(f"The user name {name!r} is reserved: /{name} is a page of the hub's"
                          " web site. Choose another name.")
    return name


def check_adapter_name(name: str) -> str:
    """Return `name` if it is a valid adapter name, else raise InvalidName."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name \
            or name.endswith(".git"):
        raise InvalidName(f"Invalid adapter name {name!r}: use 1-96 letters, digits, '.', '-'"
                          " or '_', starting with a letter or digit, without '..'.")
    return name


def check_version_label(label: str) -> str:
    """Return `label` if it is a publishable version label, else raise InvalidVersion."""
    if not isinstance(label, str) or not VERSION_RE.fullmatch(label):
        raise InvalidVersion(f"Invalid version label {label!r}: it must match"
                             " ^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$ (for example 1.0.0).")
    if label.lower() in RESERVED_VERSIONS:
        raise InvalidVersion(f"The version label {label!r} is reserved; choose another.")
    return label


def split_adapter_id(value: object) -> tuple[str, str] | None:
    """('owner', 'name') of an 'owner/name' string, or None when it is not that shape."""
    owner, slash, name = value.partition("/") if isinstance(value, str) else ("", "", "")
    if not slash or not owner or not name or "/" in name:
        return None
    return owner, name


#: Where a tags field typed as one text ("a, b c") splits: commas and whitespace.
_TAG_SEPARATORS = re.compile(r"[,\s]+")


def split_tags(text: str) -> list[str]:
    """The tags of a field typed as one text ("a, b c"), in order; check_tags checks them."""
    return [tag for tag in _TAG_SEPARATORS.split(text) if tag]


def check_tags(tags: object) -> list[str]:
    """A de-duplicated list of valid tags, or InvalidRequest."""
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise InvalidRequest("'tags' must be a list of strings.")
    if len(tags) > MAX_TAGS:
        raise InvalidRequest(f"At most {MAX_TAGS} tags are allowed, got {len(tags)}.")
    seen: list[str] = []
    for tag in tags:
        tag = tag.strip()
        if not TAG_RE.match(tag):
            raise InvalidRequest(f"Invalid tag {tag!r}: use up to 64 letters, digits or"
                                 " '._:/+-', starting with a letter or digit.")
        if tag not in seen:
            seen.append(tag)
    return seen


def readme_tags(tags: object) -> list[str]:
    """The tags of a README's front matter that the hub can keep (the first MAX_TAGS valid
    ones): the publisher did not type them (PEFT writes `base_model:adapter:<path>`, which
    can be long or hold spaces), so one that does not fit is dropped, not an error."""
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, list):
        return []
    kept = [tag.strip() for tag in tags if isinstance(tag, str) and TAG_RE.match(tag.strip())]
    return list(dict.fromkeys(kept))[:MAX_TAGS]


def check_text(value: object, limit: int, what: str, *, multiline: bool = False) -> str:
    """`value` if it is a string of at most `limit` characters that a database stores:
    no control characters (newlines and tabs when `multiline`), no lone surrogates."""
    if (not isinstance(value, str) or len(value) > limit
            or unstorable_char(value, multiline=multiline) is not None):
        raise InvalidRequest(f"{what} must be a string of at most {limit} printable characters.")
    return value


@dataclass(frozen=True)
class Metadata:
    """What a publisher may say about an adapter besides its files."""

    description: str | None = None
    tags: list[str] | None = None
    task: str | None = None
    base_model: str | None = None
    visibility: str | None = None


_FIELDS = {"description", "tags", "task", "base_model", "visibility"}


def parse_metadata(raw: str | bytes | dict | None) -> Metadata:
    """Parse and check the `metadata` JSON object of a publish or PATCH request."""
    if raw is None or raw == "" or raw == b"":
        return Metadata()
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise InvalidRequest(f"'metadata' is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidRequest("'metadata' must be a JSON object.")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise InvalidRequest(f"Unknown metadata field(s): {', '.join(unknown)}; known fields"
                             f" are {', '.join(sorted(_FIELDS))}.")
    values: dict = {}
    for key in ("description", "task", "base_model"):
        value = raw.get(key)
        if value is None:
            continue
        limit = {"description": MAX_DESCRIPTION, "task": 64}.get(key, 256)  # column widths
        check_text(value, limit, f"'{key}'", multiline=key == "description")
        values[key] = value.strip() if key != "description" else value
    if raw.get("tags") is not None:
        values["tags"] = check_tags(raw["tags"])
    if raw.get("visibility") is not None:
        if raw["visibility"] not in VISIBILITIES:
            raise InvalidRequest("'visibility' must be 'public' or 'private'.")
        values["visibility"] = raw["visibility"]
    return Metadata(**values)
