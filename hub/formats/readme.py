"""README.md: UTF-8 text with optional YAML front matter (the Hugging Face model card)."""
from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from hub.errors import InvalidRequest
from hub.formats.text import MAX_DESCRIPTION, describe_char, unstorable_char

DEFAULT_MAX_README_BYTES = 5_000_000
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)^(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)",
                           re.DOTALL | re.MULTILINE)
_EMPTY_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)")


@dataclass(frozen=True)
class ReadmeInfo:
    """The README text and the fields its front matter supplies."""

    text: str
    front_matter: dict = field(default_factory=dict)
    license: str | None = None
    tags: list[str] = field(default_factory=list)
    base_model: str | None = None
    license_name: str | None = None
    license_link: str | None = None
    pipeline_tag: str | None = None
    task: str | None = None


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases: an alias bomb is tiny YAML but huge once dumped."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D102 - PyYAML hook
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor}) are not allowed", event.start_mark)
        return super().compose_node(parent, index)


def _jsonable(value: Any, where: str) -> Any:
    # The front matter is stored as JSON: dates become ISO strings, keys strings.
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [_jsonable(v, where) for v in items]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise InvalidRequest(f"README.md front matter: unsupported value at {where} "
                         f"({type(value).__name__})")


def _opt_str(fm: dict, key: str) -> str | None:
    value = fm.get(key)
    if value is None:
        return None
    if isinstance(value, list):  # base_model may list several; the first is the base
        value = value[0] if value else None
        if value is None:
            return None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise InvalidRequest(f"README.md front matter: `{key}` must be a string")
    return str(value).strip() or None


def _tags(fm: dict) -> list[str]:
    tags = fm.get("tags")
    if tags is None:
        return []
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, list) or not all(isinstance(t, (str, int, float)) and
                                             not isinstance(t, bool) for t in tags):
        raise InvalidRequest("README.md front matter: `tags` must be a string or a list of strings")
    return [str(t).strip() for t in tags if str(t).strip()]


# The card's fields the hub stores, with the limits the API puts on the same fields (the
# column widths; the description's documented limit): a card is no way around them.
_STORED_FIELDS = (("description", MAX_DESCRIPTION), ("base_model", 256), ("pipeline_tag", 64),
                  ("task", 64), ("license", 64), ("license_name", 256), ("license_link", 1024))


def _check_stored_fields(fm: dict) -> None:
    for key, limit in _STORED_FIELDS:
        if key == "description":
            # Kept as written (a non-string description is ignored, never stored).
            value = fm.get(key) if isinstance(fm.get(key), str) else None
        else:
            value = _opt_str(fm, key)
        if value is None:
            continue
        if len(value) > limit:
            raise InvalidRequest(f"README.md front matter: `{key}` has {len(value)} characters;"
                                 f" the limit is {limit}")
        bad = unstorable_char(value, multiline=key == "description")
        if bad is not None:
            raise InvalidRequest(f"README.md front matter: `{key}` holds"
                                 f" {describe_char(bad)}; only printable text is stored")


def parse_front_matter(text: str) -> dict:
    """The YAML front matter between leading '---' lines as a dict ({} when absent)."""
    if _EMPTY_FRONT_MATTER.match(text):
        return {}
    m = _FRONT_MATTER.match(text)
    if m is None:
        if text.startswith("---\n") or text.startswith("---\r\n"):
            raise InvalidRequest("README.md front matter starts with '---' but never ends")
        return {}
    try:
        data = yaml.load(m.group(1), Loader=_NoAliasLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"README.md front matter is not valid YAML: {exc}") from None
    except RecursionError:
        raise InvalidRequest("README.md front matter is nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidRequest("README.md front matter must be a YAML mapping "
                             f"(key: value lines), not a {type(data).__name__}")
    return _jsonable(data, "front matter")


def front_matter_scalar(text: str, key: str) -> str | None:
    """The text written for the top-level `key` of `text`'s front matter when it is a plain
    scalar (as typed, before YAML reads `1.10` as a float or `012` as an octal integer);
    None when absent or not a plain scalar. The front matter must parse (parse_front_matter)."""
    m = _FRONT_MATTER.match(text)
    if m is None:
        return None
    node = yaml.compose(m.group(1), Loader=_NoAliasLoader)  # noqa: S506 - SafeLoader subclass
    if not isinstance(node, yaml.MappingNode):
        return None
    for name, value in node.value:
        if (isinstance(name, yaml.ScalarNode) and name.value == key
                and isinstance(value, yaml.ScalarNode) and value.style is None):
            return value.value
    return None


def parse_readme(data: bytes, *, max_bytes: int = DEFAULT_MAX_README_BYTES) -> ReadmeInfo:
    """Decode README.md bytes as UTF-8 and read its front matter fields."""
    if len(data) > max_bytes:
        raise InvalidRequest(f"README.md has {len(data)} bytes; the limit is {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"README.md is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    text = text.removeprefix("\ufeff")
    fm = parse_front_matter(text)
    _check_stored_fields(fm)
    pipeline_tag = _opt_str(fm, "pipeline_tag")
    return ReadmeInfo(
        text=text, front_matter=fm, license=_opt_str(fm, "license"), tags=_tags(fm),
        base_model=_opt_str(fm, "base_model"), license_name=_opt_str(fm, "license_name"),
        license_link=_opt_str(fm, "license_link"), pipeline_tag=pipeline_tag,
        task=pipeline_tag or _opt_str(fm, "task"))


def readme_body(text: str) -> str:
    """The README's Markdown without its front matter (what a model card page shows)."""
    text = text.removeprefix("\ufeff")
    match = _EMPTY_FRONT_MATTER.match(text) or _FRONT_MATTER.match(text)
    return text[match.end():] if match else text
