"""`lorastack merge`: a merge run by the hub, waited for, downloaded, unpacked, maybe published."""
from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from time import sleep
from typing import NoReturn

import click

from hub.cli.errors import OneLineCommand
from hub.cli.http import HubClient
from hub.cli.merges import cancel_text, energy_text, license_text, publish_merge
from hub.cli.progress import ByteProgress, MergeProgress
from hub.cli.provenance import PROVENANCE_FILE, REPORT_FILE
from hub.cli.refs import split_pinned_ref, split_ref, split_weight
from hub.cli.transfer import check_target, move_into_place
from hub.errors import HubUnreachable, InvalidMerge
from hub.formats.names import ALLOWED_FILES
from hub.merge.spec import ALIASES, DTYPES, METHODS, OUTPUTS, SIGN_METHODS

ACTIVE = ("queued", "running")
# The first poll comes soon (a small merge ends in about a second); later ones slow down a
# little, so a long merge costs the hub about one request a second.
POLL_FIRST_S = 0.5
POLL_MAX_S = 1.0
POLL_BACKOFF = 1.25
#: What a merge result folder can hold: --force removes those the new result lacks (and a
#: pulled version's provenance, which would no longer describe the folder).
RESULT_FILES = ALLOWED_FILES | {"delta.safetensors", REPORT_FILE, PROVENANCE_FILE}


def parse_source(arg: str) -> dict:
    """owner/name[@VERSION][:WEIGHT] -> a MergeSpec source (latest and weight 1 by default)."""
    ref, weight = split_weight(arg)
    if weight is None and ":" in arg:
        head, _, tail = arg.rpartition(":")
        raise InvalidMerge(f"weight for {head} is not a number: {tail!r}")
    owner, name, version = split_ref(ref)
    return {"adapter": f"{owner}/{name}", "version": version,
            "weight": 1.0 if weight is None else weight}


def stdin_is_terminal() -> bool:
    """Whether a person can answer a question on stdin."""
    return sys.stdin.isatty()


def ask_to_cancel(merge_id: str, interactive: bool,
                  confirm: Callable[..., bool] = click.confirm) -> bool:
    """After Ctrl-C: on a terminal, ask whether to cancel the merge on the hub; never without one."""
    if not interactive:
        return False
    try:
        return confirm(f"Cancel merge {merge_id} on the hub?", default=False, err=True)
    except (click.Abort, KeyboardInterrupt, EOFError):  # a second Ctrl-C, or stdin closed
        return False


def stop_waiting(client: HubClient, merge_id: str) -> NoReturn:
    """Ctrl-C while waiting: cancel the merge when asked to, else say how; exit status 130."""
    if ask_to_cancel(merge_id, stdin_is_terminal()):
        click.echo(cancel_text(client.json(client.request("DELETE", f"/merges/{merge_id}"))), err=True)
    else:
        click.echo(f"merge {merge_id} continues on the hub: `lorastack merges show {merge_id}` "
                   f"follows it, `lorastack merges cancel {merge_id}` cancels it", err=True)
    raise click.exceptions.Exit(130)


def poll(client: HubClient, merge: dict, progress: MergeProgress) -> dict:
    """GET the merge until it has ended, drawing each state; returns the ended Merge."""
    interval = POLL_FIRST_S
    while merge["status"] in ACTIVE:
        progress.update(merge)
        sleep(interval)
        interval = min(interval * POLL_BACKOFF, POLL_MAX_S)
        try:
            merge = client.get_json(f"/merges/{merge['id']}")
        except HubUnreachable as error:
            raise HubUnreachable(f"{error.detail}; merge {merge['id']} may still run there: "
                                 f"`lorastack merges show {merge['id']}`") from None
    return merge


def wait(client: HubClient, merge: dict) -> dict:
    """Wait for the merge to end, its progress on stderr; Ctrl-C offers to cancel it."""
    progress = MergeProgress(merge["id"])
    try:
        return poll(client, merge, progress)
    except KeyboardInterrupt:
        progress.finish()  # the question starts on a line of its own
        stop_waiting(client, merge["id"])
    finally:
        progress.finish()  # idempotent: an error's line, too, starts on its own


def fetch_archive(client: HubClient, merge: dict, path: Path) -> None:
    """Download the merge's zip into `path`, checking it against the Merge's archive sha256."""
    archive = merge.get("archive")
    if not archive:
        raise click.ClickException(f"merge {merge['id']} has no archive to download"
                                   + (" (its result expired)" if merge.get("expired") else ""))
    digest = hashlib.sha256()
    with ByteProgress(f"downloading merge {merge['id']}", archive["size"]) as bar, \
            open(path, "wb") as out:
        def take(chunk: bytes) -> None:
            digest.update(chunk)
            bar.update(len(chunk))

        client.download(f"/merges/{merge['id']}/archive", out, on_chunk=take)
    if digest.hexdigest() != archive["sha256"]:
        raise click.ClickException(f"the archive of merge {merge['id']} does not match its "
                                   f"sha256: run the command again (the hub reuses the merge)")


def unpack(archive: Path, folder: Path, merge: dict) -> list[str]:
    """Unzip `archive` into `folder`; it must hold the merge's files, by plain names only."""
    expected = sorted(file["path"] for file in merge["files"])
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            # The names become paths here: nothing but the merge's own files, in no folder.
            if (sorted(names) != expected or not set(names) <= RESULT_FILES - {PROVENANCE_FILE}
                    or any(Path(name).name != name for name in names)):
                raise click.ClickException(f"the archive of merge {merge['id']} holds "
                                           f"{', '.join(names)}, not its files "
                                           f"{', '.join(expected)}")
            folder.mkdir()
            for name in names:
                zf.extract(name, folder)
    except zipfile.BadZipFile as exc:
        raise click.ClickException(f"the archive of merge {merge['id']} is not a zip: "
                                   f"{exc}") from None
    return names


def save_result(client: HubClient, merge: dict, directory: Path) -> None:
    """Download and unzip the result beside `directory`, then move its files into place."""
    parent = directory.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        # Staged beside the target, so the final moves are renames on one filesystem.
        staging = Path(tempfile.mkdtemp(prefix=".merge-", dir=parent))
        try:
            fetch_archive(client, merge, staging / "archive.zip")
            names = unpack(staging / "archive.zip", staging / "result", merge)
            move_into_place(staging / "result", directory, names, managed=RESULT_FILES)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise click.ClickException(f"cannot write {exc.filename or directory}: "
                                   f"{exc.strerror or exc}") from None


def summary(merge: dict, directory: Path) -> str:
    """One line: the merge, its device, modules, energy kept, where it went, its licence."""
    report = merge.get("report") or {}
    kept = energy_text(report)
    return (f"merge {merge['id']} on {merge.get('device') or report.get('device') or '-'}: "
            f"{merge.get('modules') or len(report.get('modules') or [])} modules"
            + (f", energy kept {kept}" if kept else "")
            + f", into {directory}; licence {license_text(merge.get('license'))}")


@click.command("merge", cls=OneLineCommand, short_help="Merge adapters on the hub and download the result.")
@click.argument("sources", nargs=-1, required=True, metavar="OWNER/NAME[@V][:WEIGHT]...")
@click.option("--method", default="linear", show_default=True,
              help=f"One of {', '.join(METHODS)}; PEFT's {', '.join(ALIASES)} are aliases.")
@click.option("--rank", type=int, default=None,
              help="Target rank (best rank-N approximation); linear without it is exact.")
@click.option("--density", type=float, default=None,
              help="Fraction of each update kept by ties / dare / magnitude_prune, in (0, 1].")
@click.option("--majority-sign", "--majority-sign-method", "majority_sign_method",
              type=click.Choice(SIGN_METHODS), default=None,
              help="How ties elects each weight's sign (the hub's default: total).")
@click.option("--seed", type=int, default=None, help="Seed for DARE's drops (default 0).")
@click.option("--output", type=click.Choice(OUTPUTS), default="lora", show_default=True,
              help="lora: a PEFT adapter folder; delta: delta.safetensors keyed by base weight names.")
@click.option("--dtype", type=click.Choice(DTYPES), default=None,
              help="Output dtype (default: the sources' dtype when they share one).")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output folder (new or empty, unless --force).")
@click.option("--force", is_flag=True,
              help="Overwrite the result's files in a non-empty folder (or replace a file).")
@click.option("--publish", "publish_ref", default=None, metavar="OWNER/NAME@VERSION",
              help="Then publish the result as this version, its sources as parents.")
@click.option("--license-link", default=None,
              help="With --publish: URL of the combined terms when the licence is a combination.")
def merge_command(sources: tuple[str, ...], out_dir: Path, force: bool,
                  publish_ref: str | None, license_link: str | None, **params) -> None:
    """Merge owner/name[@VERSION][:WEIGHT] adapters on the hub (latest, weight 1 by default)."""
    body = {"sources": [parse_source(arg) for arg in sources],
            **{key: value for key, value in params.items() if value is not None}}
    if publish_ref is not None:
        split_pinned_ref(publish_ref)
        if body["output"] != "lora":
            raise click.ClickException("--publish needs --output lora: a dense delta is not "
                                       "an adapter PEFT loads")
    check_target(out_dir, force, verb="merge")
    client = HubClient()
    response = client.request("POST", "/merges", json=body)
    merge = client.json(response)
    if response.status_code == 200:
        click.echo(f"reusing merge {merge['id']} ({merge['status']}): you asked for the "
                   f"same merge before", err=True)
    merge = wait(client, merge)
    if merge["status"] != "succeeded":
        error = merge.get("error") or {}
        raise click.ClickException(f"merge {merge['id']} {merge['status']}: "
                                   f"{error.get('detail') or 'no detail'} "
                                   f"({error.get('code') or merge['status']})")
    save_result(client, merge, out_dir)
    click.echo(summary(merge, out_dir))
    if publish_ref is not None:
        publish_merge(client, merge["id"], publish_ref, license_link)
