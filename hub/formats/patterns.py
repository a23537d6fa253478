"""The regexes an upload carries, matched as PEFT matches them but in linear time.

An adapter_config.json may hold regexes: `rank_pattern` / `alpha_pattern` keys, a string
`target_modules` or `exclude_modules`, `layers_pattern`. PEFT runs them with Python's `re`,
which backtracks: a key such as `.*.*.*.*.*=` takes time exponential in the length of the
module name, and no syntactic guard catches every such shape. The hub runs
every one of them with RE2 (google-re2), whose time is linear in the name whatever the
pattern, in the same textual combinations PEFT builds, so a pattern selects the same
modules here as in PEFT. A pattern must compile in both engines: Python's (PEFT loads the
adapter with it) and RE2's; RE2 refuses backreferences, lookaround, atomic groups and
possessive quantifiers, which module-name patterns do not need. One difference remains:
RE2's `\\d` and `\\w` are ASCII only (module names are ASCII in practice).
"""
from __future__ import annotations

import functools
import re

import re2

from hub.errors import InvalidAdapterConfig
from hub.formats.safetensors_file import quote

MAX_PATTERN_LEN = 512
# A short pattern can still expand into a large program (`[a-z]{1000}` repeated): the
# total of one config's patterns, and each program's memory, are bounded so that an
# upload cannot make the hub compile and keep a large amount of them.
MAX_PATTERNS_TOTAL_LEN = 64 * 1024

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a refused pattern is the caller's error, not a log line
_OPTIONS.max_mem = 1 << 20  # module-name patterns need a small fraction of this


def check_pattern(pattern: object, what: str) -> str:
    """`pattern` if both engines take it; InvalidAdapterConfig naming `what` otherwise."""
    if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN_LEN:
        raise InvalidAdapterConfig(f"{what} must be non-empty strings up to "
                                   f"{MAX_PATTERN_LEN} characters, got {quote(pattern)}")
    try:
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        raise InvalidAdapterConfig(f"{what} {quote(pattern)} is not a valid regex: {exc}") from None
    _checked(pattern, what, cache=False)  # checked, then dropped: only matching caches
    return pattern


def peft_key_matches(key: str, name: str) -> bool:
    """Whether a rank_pattern / alpha_pattern key selects the module `name`, as PEFT's
    get_pattern_key: `re.match(rf"(.*\\.)?({key})$", name)`."""
    return _checked(rf"(.*\.)?({key})$", "a pattern key").match(name) is not None


def first_key_matching(keys: tuple[str, ...], name: str) -> str | None:
    """The first of `keys` that selects the module `name` as peft_key_matches, else None."""
    for key, regex in zip(keys, _key_set(keys)):
        if regex.match(name) is not None:
            return key
    return None


# One config's keys are matched against every module: compiled once as a set, so that a
# config with more keys than _compile's cache holds does not recompile them per module.
@functools.lru_cache(maxsize=4)
def _key_set(keys: tuple[str, ...]) -> tuple:
    return tuple(_checked(rf"(.*\.)?({key})$", "a pattern key", cache=False) for key in keys)


def fullmatches(pattern: str, name: str) -> bool:
    """Whether `pattern` matches the whole of `name` (a string target_modules or
    exclude_modules, as PEFT's `re.fullmatch`)."""
    return _checked(pattern, "`target_modules`").fullmatch(name) is not None


def layer_index(patterns: list[str], module: str) -> int | None:
    """The layer index PEFT finds in `module` with `layers_pattern`: the first pattern whose
    combined regex matches decides; None when it finds no index."""
    for pattern in patterns:
        if "idx" in re.compile(pattern).groupindex:
            raise InvalidAdapterConfig(f"`layers_pattern` {quote(pattern)} does not combine"
                                       " into PEFT's layer pattern: it names a group `idx`")
        regex = _checked(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.",
                         f"`layers_pattern` {quote(pattern)} in PEFT's layer pattern")
        match = regex.match(module)
        if match is not None:
            # An alternation in the pattern can match with the index group left empty:
            # as in PEFT, that is no layer index.
            index = match.group("idx")
            return None if index is None else int(index)
    return None


def _checked(pattern: str, what: str, cache: bool = True):
    """`pattern` compiled by RE2; InvalidAdapterConfig naming `what` when RE2 refuses it."""
    try:
        return _compile(pattern) if cache else _compile.__wrapped__(pattern)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(
            exc.args[0], bytes) else str(exc)
        if "too large" in reason or "too big" in reason:
            raise InvalidAdapterConfig(
                f"{what} {quote(pattern)} is too large once compiled ({reason}): its"
                " repetitions expand beyond what a module-name pattern needs; write it"
                " with fewer or smaller counted repetitions") from None
        raise InvalidAdapterConfig(
            f"{what} {quote(pattern)} cannot be matched in linear time ({reason}); the hub"
            " matches patterns with RE2, which has no backreferences, lookaround, atomic"
            " groups or possessive quantifiers") from None


# Keyed by the pattern alone and small: every entry may hold up to max_mem.
@functools.lru_cache(maxsize=256)
def _compile(pattern: str):
    # re2.compile keeps the programs it builds in a cache of its own, bounded by count
    # and not by size; building the Regexp directly leaves this cache as the only one.
    # (_Regexp is the module's own class; without it, compile still matches correctly.)
    build = getattr(re2, "_Regexp", None) or re2.compile
    return build(pattern, _OPTIONS)
