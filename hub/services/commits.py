"""Versions seen as git revisions: each version's commit id, and revision names to versions.

The Hugging Face protocol names a snapshot by a 40-hex commit id, and clients cache files
under it forever: the id must never change and two different versions must never share
one. It is therefore a sha1 over the version label and its file manifest (path, sha256,
size, sorted by path), both of which are immutable; the label is included so that two
versions with identical files are two commits.
"""
from __future__ import annotations

import hashlib
import re
from typing import Iterable

from hub.models import Adapter, Version
from hub.services.shapes import latest_version

#: The branch every client asks for by default: the newest version that is not yanked.
MAIN = "main"
_COMMIT = re.compile(r"[0-9a-f]{40}")


def commit_id(label: str, files: Iterable[tuple[str, str, int]]) -> str:
    """The commit id of a version labelled `label` holding `files` (path, sha256, size)."""
    digest = hashlib.sha1(b"lorastack-version-commit v1\n")
    digest.update(f"label\0{label}\n".encode())
    for path, sha256, size in sorted(files):
        digest.update(f"file\0{path}\0{sha256}\0{size}\n".encode())
    return digest.hexdigest()


def version_commit(version: Version) -> str:
    """The commit id of a published version."""
    return commit_id(version.label, ((f.path, f.sha256, f.size) for f in version.files))


def find_revision(adapter: Adapter, revision: str) -> Version | None:
    """The version `revision` names: `main` (or `latest`), a label, or a commit id.

    A yanked version stays reachable by its label and its commit id, as in the API.
    """
    if revision in (MAIN, "latest"):
        return latest_version(adapter)
    for version in adapter.versions:
        if version.label == revision:
            return version
    if _COMMIT.fullmatch(revision):
        for version in adapter.versions:
            if version_commit(version) == revision:
                return version
    return None
