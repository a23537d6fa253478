"""Client-side commands: push and search here; pull, show and yank in their own modules."""
from __future__ import annotations

import json
from pathlib import Path

import click

from hub.cli import show, transfer
from hub.cli.http import HubClient, MultipartStream
from hub.cli.progress import ByteProgress
from hub.cli.refs import split_ref


@click.command("push", short_help="Publish an adapter folder as a version.")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("ref")
@click.option("--version", "version", required=True, help="Version label, e.g. 1.0.0.")
@click.option("--license", "license_id", default=None,
              help="Licence id (see GET /api/v1/licenses); default: the README's front matter.")
@click.option("--license-name", default=None, help="With --license other.")
@click.option("--license-link", default=None, help="With --license other.")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@click.option("--description", default=None)
@click.option("--task", default=None)
@click.option("--base-model", default=None)
@click.option("--private", is_flag=True, help="Create the adapter as private.")
def push(directory: Path, ref: str, version: str, license_id: str | None,
         license_name: str | None, license_link: str | None, tags: tuple[str, ...],
         description: str | None, task: str | None, base_model: str | None,
         private: bool) -> None:
    """Publish the PEFT adapter in DIRECTORY as owner/name at --version."""
    owner, name, at = split_ref(ref)
    if "@" in ref:
        raise click.ClickException(f"{ref!r}: give the version with --version, not @{at}")
    from hub.formats.names import ALLOWED_FILES, CONVERT_HINT, PICKLE_SUFFIXES, REQUIRED_FILES

    files = [directory / f for f in sorted(ALLOWED_FILES) if (directory / f).is_file()]
    missing = [f for f in REQUIRED_FILES if not (directory / f).is_file()]
    if missing:
        pickles = sorted(p.name for p in directory.iterdir()
                         if p.name.lower().endswith(PICKLE_SUFFIXES))
        hint = f"; found {', '.join(pickles)}: {CONVERT_HINT}" if pickles else ""
        raise click.ClickException(f"{directory} has no {', '.join(missing)}{hint}")
    metadata: dict = {}
    for key, value in (("description", description), ("task", task),
                       ("base_model", base_model)):
        if value is not None:
            metadata[key] = value
    if tags:
        metadata["tags"] = list(tags)
    if private:
        metadata["visibility"] = "private"
    fields = [("version", version)]
    for key, value in (("license", license_id), ("license_name", license_name),
                       ("license_link", license_link)):
        if value:
            fields.append((key, value))
    if metadata:
        fields.append(("metadata", json.dumps(metadata)))
    body = MultipartStream(fields, [("files", path) for path in files])
    client = HubClient()
    with ByteProgress(f"pushing {owner}/{name}@{version}", len(body)) as bar:
        body.on_read = bar.update
        response = client.request("POST", f"/adapters/{owner}/{name}/versions", data=body,
                                  headers={"Content-Type": body.content_type}, timeout=None)
    result = client.json(response)
    verb = "published" if response.status_code == 201 else "already published (identical)"
    click.echo(f"{verb} {result['adapter']}@{result['version']}"
               f" ({len(result['files'])} files, {result['size_bytes']} bytes)")


@click.command("search")
@click.argument("text", required=False)
@click.option("--base-model", default=None)
@click.option("--license", "license_id", default=None)
@click.option("--tag", default=None)
@click.option("--task", default=None)
@click.option("--owner", default=None)
@click.option("--sort", type=click.Choice(["relevance", "downloads", "created", "updated",
                                          "name"]), default=None,
              help="Default: relevance with TEXT, else downloads.")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON items.")
def search(text, base_model, license_id, tag, task, owner, sort, limit, as_json) -> None:
    """Search the catalog."""
    params = {key: value for key, value in (("search", text), ("base_model", base_model),
                                            ("license", license_id), ("tag", tag),
                                            ("task", task), ("owner", owner), ("sort", sort),
                                            ("limit", limit)) if value is not None}
    items = HubClient().get_json("/adapters", **params)["items"]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("no adapters found")
        return
    rows = [(i["id"], i["latest_version"] or "-", i["license"] or "-", i["base_model"] or "-",
             str(i["downloads"])) for i in items]
    header = ("ADAPTER", "LATEST", "LICENSE", "BASE MODEL", "DOWNLOADS")
    widths = [max(len(r[c]) for r in rows + [header]) for c in range(len(header))]
    for row in [header] + rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def register(group: click.Group) -> None:
    """Add the client commands to the `lorastack` group."""
    for command in (push, transfer.pull, search, show.show, show.yank, show.unyank):
        group.add_command(command)
