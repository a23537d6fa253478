"""`lorastack show`, `yank` and `unyank`: an adapter's or a version's details, and yanks."""
from __future__ import annotations

import json

import click

from hub.cli.http import HubClient
from hub.cli.progress import human_bytes
from hub.cli.refs import split_pinned_ref, split_ref


def detail_rows(pairs: list[tuple[str, object]]) -> list[str]:
    """`  key       value` lines, keys padded to one width; None shows as '-'."""
    width = max(len(key) for key, _ in pairs)
    return [f"  {key.ljust(width)}  {'-' if value is None else value}" for key, value in pairs]


def _license(view: dict) -> str:
    if view.get("license") == "other" and view.get("license_name"):
        link = f" <{view['license_link']}>" if view.get("license_link") else ""
        return f"other: {view['license_name']}{link}"
    return view.get("license") or "-"


def format_adapter(adapter: dict) -> list[str]:
    """An AdapterSummary with its versions (newest first, yanked ones marked) as lines."""
    lines = [f"{adapter['id']} ({adapter['visibility']})"]
    lines += detail_rows([("description", adapter.get("description") or None),
                    ("base model", adapter.get("base_model")),
                    ("licence", _license(adapter)),
                    ("tags", ", ".join(adapter.get("tags") or []) or None),
                    ("task", adapter.get("task")),
                    ("latest", adapter.get("latest_version")),
                    ("downloads", adapter.get("downloads")),
                    ("updated", adapter.get("updated_at"))])
    versions = adapter.get("versions") or []
    lines.append(f"  versions ({len(versions)}, newest first):")
    for version in versions:
        line = f"    {version['version']}  {version['created_at']}  {_license(version)}"
        if version.get("yanked"):
            line += f"  YANKED: {version.get('yank_reason') or 'no reason given'}"
        lines.append(line)
    return lines


def format_version(version: dict) -> list[str]:
    """A Version (parameters, licence, files with size and sha256, parents) as lines."""
    head = f"{version['adapter']}@{version['version']}"
    if version.get("yanked"):
        head += f" (YANKED: {version.get('yank_reason') or 'no reason given'})"
    size = version.get("size_bytes")
    lines = [head]
    lines += detail_rows([("created", version.get("created_at")),
                    ("licence", _license(version)),
                    ("base model", version.get("base_model")),
                    ("peft type", version.get("peft_type")),
                    ("rank", version.get("r")),
                    ("alpha", None if version.get("lora_alpha") is None
                     else f"{version['lora_alpha']:g}"),
                    ("target modules", ", ".join(version.get("target_modules") or []) or None),
                    ("parameters", None if version.get("num_parameters") is None
                     else f"{version['num_parameters']:,}"),
                    ("size", None if size is None else f"{human_bytes(size)} ({size:,} bytes)"),
                    ("mergeable", "yes" if version.get("mergeable") else "no")])
    lines.append("  files:")
    width = max((len(f["path"]) for f in version["files"]), default=0)
    for file in version["files"]:
        lines.append(f"    {file['path'].ljust(width)}  {human_bytes(file['size']):>10}  "
                     f"sha256 {file['sha256']}")
    parents = version.get("parents") or []
    if parents:
        lines.append("  parents:")
        lines += [f"    {p['adapter']}@{p['version']} (weight {p['weight']:g})" for p in parents]
    return lines


@click.command("show", short_help="Show an adapter, or one of its versions.")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def show(ref: str, as_json: bool) -> None:
    """Show an adapter and its versions, or one version with owner/name@VERSION."""
    owner, name, label = split_ref(ref)
    client = HubClient()
    if "@" in ref:
        body = client.get_json(f"/adapters/{owner}/{name}/versions/{label}")
        lines = format_version(body)
    else:
        body = client.get_json(f"/adapters/{owner}/{name}")
        lines = format_adapter(body)
    click.echo(json.dumps(body, indent=2) if as_json else "\n".join(lines))


@click.command("yank", short_help="Yank a version: latest skips it.")
@click.argument("ref")
@click.option("--reason", default=None, help="Why (shown to anyone who pulls it).")
def yank(ref: str, reason: str | None) -> None:
    """Yank owner/name@VERSION: `latest` skips it; its label still downloads, with a warning."""
    owner, name, label = split_pinned_ref(ref)
    body = {"reason": reason} if reason else {}
    version = HubClient().post_json(f"/adapters/{owner}/{name}/versions/{label}/yank", body)
    because = f": {version['yank_reason']}" if version.get("yank_reason") else ""
    click.echo(f"yanked {version['adapter']}@{version['version']}{because}")


@click.command("unyank", short_help="Undo a yank.")
@click.argument("ref")
def unyank(ref: str) -> None:
    """Undo a yank of owner/name@VERSION: it counts for `latest` again."""
    owner, name, label = split_pinned_ref(ref)
    version = HubClient().post_json(f"/adapters/{owner}/{name}/versions/{label}/unyank", {})
    click.echo(f"unyanked {version['adapter']}@{version['version']}")
