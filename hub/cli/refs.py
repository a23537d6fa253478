"""Adapter references on the command line: owner/name[@version]."""
from __future__ import annotations

import click


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
