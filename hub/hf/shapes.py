"""The JSON shapes of the Hugging Face protocol (ModelInfo, siblings, tree entries, refs),
built from lorastack's models in one place.

Every file of a version is presented as a Git LFS object: its LFS oid is the sha256 the
hub already stores, and its git blob id is that of the LFS pointer file, which follows
from the sha256 and the size alone, so no listing ever reads a file's bytes.
"""
from __future__ import annotations

import hashlib

from hub.models import Adapter, Version, VersionFile
from hub.services.commits import MAIN, version_commit
from hub.services.shapes import iso, latest_version

LIBRARY = "peft"


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The Git LFS pointer file that stands for a blob in a git tree."""
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\n"
            f"size {size}\n").encode()


def blob_id(file: VersionFile) -> str:
    """The git object id of the file's LFS pointer (`git hash-object` of it)."""
    pointer = lfs_pointer(file.sha256, file.size)
    return hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()


def lfs_info(file: VersionFile) -> dict:
    """The `lfs` object of a sibling (`sha256`) and of a tree entry (`oid`)."""
    return {"sha256": file.sha256, "oid": file.sha256, "size": file.size,
            "pointerSize": len(lfs_pointer(file.sha256, file.size))}


def sibling(file: VersionFile, blobs: bool) -> dict:
    """One entry of `siblings`; sizes and digests only when the client asked for blobs."""
    if not blobs:
        return {"rfilename": file.path}
    return {"rfilename": file.path, "size": file.size, "blobId": blob_id(file),
            "lfs": lfs_info(file)}


def tree_entry(file: VersionFile) -> dict:
    """One file of `GET /api/models/{repo}/tree/{revision}`."""
    return {"type": "file", "oid": blob_id(file), "size": file.size, "path": file.path,
            "lfs": lfs_info(file)}


def repo_tags(adapter: Adapter, version: Version | None) -> list[str]:
    """The adapter's tags plus the ones the Hub derives (library, format, base, licence)."""
    tags = [row.tag for row in adapter.tags]
    derived = [LIBRARY, "safetensors"]
    if version is not None and version.peft_type == "LORA":
        derived.append("lora")
    base_model = (version.base_model if version is not None else None) or adapter.base_model
    if base_model:
        derived.append(f"base_model:adapter:{base_model}")
    license_ = (version.license if version is not None else None) or adapter.license
    if license_:
        derived.append(f"license:{license_}")
    return tags + [tag for tag in derived if tag not in tags]


def model_summary(adapter: Adapter, latest: Version | None) -> dict:
    """A model of `GET /api/models`: what a listing knows without reading files (`latest`
    is the adapter's latest version, which a listing loads for all its rows at once)."""
    return {
        "_id": f"lorastack-{adapter.id}",
        "id": f"{adapter.owner.name}/{adapter.name}",
        "modelId": f"{adapter.owner.name}/{adapter.name}",
        "author": adapter.owner.name,
        "private": adapter.visibility != "public",
        "gated": False,
        "disabled": False,
        "downloads": adapter.downloads,
        "likes": 0,
        "library_name": LIBRARY,
        "tags": repo_tags(adapter, latest),
        "pipeline_tag": adapter.task,
        "createdAt": iso(adapter.created_at),
        "lastModified": iso(adapter.updated_at),
    }


def model_info(adapter: Adapter, version: Version | None, *, card_data: dict | None,
               blobs: bool) -> dict:
    """`GET /api/models/{repo}[/revision/{revision}]`: the summary plus the revision's
    commit, files and model card front matter."""
    info = model_summary(adapter, version)
    if version is None:  # created, nothing published yet
        info.update(sha=None, siblings=[])
        return info
    info.update(
        sha=version_commit(version),
        lastModified=iso(version.created_at),
        siblings=[sibling(file, blobs) for file in version.files],
        usedStorage=version.size_bytes,
    )
    if card_data is not None:
        info["cardData"] = card_data
    return info


def refs(adapter: Adapter) -> dict:
    """`GET /api/models/{repo}/refs`: `main` (latest) and one tag per version label."""
    latest = latest_version(adapter)
    branches = []
    if latest is not None:
        branches.append({"name": MAIN, "ref": f"refs/heads/{MAIN}",
                         "targetCommit": version_commit(latest)})
    tags = [{"name": v.label, "ref": f"refs/tags/{v.label}", "targetCommit": version_commit(v)}
            for v in adapter.versions]
    return {"branches": branches, "converts": [], "tags": tags, "pullRequests": []}


def commit_entry(adapter: Adapter, version: Version) -> dict:
    """One commit of `GET /api/models/{repo}/commits/{revision}`: a version."""
    title = f"Version {version.label}"
    if version.yanked:
        title += " (yanked" + (f": {version.yank_reason})" if version.yank_reason else ")")
    return {"id": version_commit(version), "title": title, "message": "",
            "authors": [{"user": adapter.owner.name}], "date": iso(version.created_at)}
