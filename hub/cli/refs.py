"""Adapter references on the command line: owner/name[@version], and a source's :WEIGHT."""
from __future__ import annotations

import math

import click

from hub.errors import InvalidMerge


def split_ref(ref: str) -> tuple[str, str, str]:
    """owner/name[@version] -> (owner, name, version or 'latest')."""
    spec, _, version = ref.partition("@")
    owner, slash, name = spec.partition("/")
    if not slash or not owner or not name or "/" in name:
        raise click.ClickException(f"{ref!r} is not owner/name[@version]")
    return owner, name, version or "latest"


def split_pinned_ref(ref: str) -> tuple[str, str, str]:
    """owner/name@version with a real label: what yank and unyank act on."""
    owner, name, version = split_ref(ref)
    if "@" not in ref or version == "latest":
        raise click.ClickException(f"{ref!r} names no version: give owner/name@VERSION "
                                 f"(a label, not latest)")
    return owner, name, version


def split_weight(arg: str) -> tuple[str, float | None]:
    """X:WEIGHT -> (X, WEIGHT) when the text after the last ':' is a number, else (arg, None).

    Raises InvalidMerge for a weight that parses but is not finite (nan, inf).
    """
    head, sep, tail = arg.rpartition(":")
    if not sep:
        return arg, None
    try:
        weight = float(tail)
    except ValueError:
        return arg, None
    if not math.isfinite(weight):
        raise InvalidMerge(f"weight for {head or arg} is not a finite number: {tail!r}")
    return head, weight
