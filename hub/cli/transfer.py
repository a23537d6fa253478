"""`lorastack pull`: download a version into a folder, checked, atomic, with its provenance."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import click

from hub.cli.http import HubClient
from hub.errors import HubUnreachable
from hub.cli.progress import ByteProgress
from hub.cli.provenance import PROVENANCE_FILE, provenance_record, write_provenance
from hub.cli.refs import split_ref
from hub.formats.names import ALLOWED_FILES


def check_target(directory: Path, force: bool, verb: str = "pull") -> None:
    """Refuse a file or a non-empty folder as the target, unless forced."""
    if force or not (directory.exists() or directory.is_symlink()):
        return
    if not directory.is_dir():
        raise click.ClickException(f"{directory} is a file, not a folder: {verb} into a new or "
                                   f"empty folder, or pass --force to replace the file")
    entries = sorted(path.name for path in directory.iterdir())
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise click.ClickException(f"{directory} is not empty ({shown}): {verb} into a new or "
                                   f"empty folder, or pass --force to overwrite the adapter's "
                                   f"files in it")


def download_version(client: HubClient, version: dict, staging: Path) -> None:
    """Download every file of `version` into `staging`, checking each sha256."""
    base = f"/adapters/{version['adapter']}/versions/{version['version']}/files"
    # The names become paths here: nothing but an adapter's own files, in no folder.
    strange = [file.get("path") for file in version["files"]
               if file.get("path") not in ALLOWED_FILES]
    if strange:
        raise HubUnreachable(f"the hub listed files an adapter does not have ({strange[0]!r});"
                             " nothing was written: is LORASTACK_ENDPOINT the hub?")
    total = sum(file["size"] for file in version["files"])
    with ByteProgress(f"pulling {version['adapter']}@{version['version']}", total) as bar:
        for file in version["files"]:
            digest = hashlib.sha256()

            def take(chunk: bytes, digest=digest) -> None:
                digest.update(chunk)
                bar.update(len(chunk))

            with open(staging / file["path"], "wb") as out:
                client.download(f"{base}/{file['path']}", out, on_chunk=take)
            if digest.hexdigest() != file["sha256"]:
                raise click.ClickException(f"{file['path']}: sha256 mismatch; download again")


def move_into_place(staging: Path, directory: Path, names: list[str],
                    managed: frozenset[str] = ALLOWED_FILES) -> None:
    """Move the staged files into `directory`; `managed` files it lacks go away."""
    if not directory.is_dir() and (directory.exists() or directory.is_symlink()):
        directory.unlink()  # a file (or a dangling link) in the way, and --force was given
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.replace(staging / name, directory / name)
    # A README of an older version left beside the new files would describe the wrong one.
    for stale in sorted(managed - set(names)):
        (directory / stale).unlink(missing_ok=True)


@click.command("pull", short_help="Download a version into a folder.")
@click.argument("ref")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True,
              help="Overwrite the adapter's files in a non-empty folder (or replace a file).")
def pull(ref: str, directory: Path, force: bool) -> None:
    """Download owner/name[@version] into DIRECTORY (checking every sha256)."""
    owner, name, label = split_ref(ref)
    check_target(directory, force)
    client = HubClient()
    version = client.get_json(f"/adapters/{owner}/{name}/versions/{label}")
    if version.get("yanked"):
        reason = version.get("yank_reason") or "no reason given"
        click.echo(f"Warning: {version['adapter']}@{version['version']} is yanked: {reason}",
                   err=True)
    try:
        _pull_into(client, version, directory)
    except OSError as exc:
        raise click.ClickException(f"cannot write {exc.filename or directory}: "
                                   f"{exc.strerror or exc}") from None
    click.echo(f"pulled {version['adapter']}@{version['version']} into {directory}")


def _pull_into(client: HubClient, version: dict, directory: Path) -> None:
    parent = directory.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    # Staged beside the target, so the final moves are renames on one filesystem.
    staging = Path(tempfile.mkdtemp(prefix=".pull-", dir=parent))
    try:
        download_version(client, version, staging)
        write_provenance(staging, provenance_record(version, client.endpoint))
        names = [file["path"] for file in version["files"]] + [PROVENANCE_FILE]
        move_into_place(staging, directory, names)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

