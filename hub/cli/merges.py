"""`lorastack merges list|show|cancel|publish`: the caller's remote merges on the hub."""
from __future__ import annotations

import json

import click

from hub.cli.http import HubClient
from hub.cli.progress import human_bytes
from hub.cli.refs import split_pinned_ref
from hub.cli.show import detail_rows
from hub.errors import InvalidRequest


def license_text(license_: dict | None) -> str:
    """A derived licence as a person reads it: its id, or `other (the combination's name)`."""
    if not license_:
        return "-"
    if license_.get("id") == "other" and license_.get("license_name"):
        link = f" <{license_['license_link']}>" if license_.get("license_link") else ""
        return f"other ({license_['license_name']}){link}"
    return license_.get("id") or "-"


def source_text(source: dict) -> str:
    """owner/name@version:weight, the way the merge command takes a source."""
    return f"{source['adapter']}@{source['version']}:{source['weight']:g}"


def progress_text(merge: dict) -> str:
    """45% (27/60 modules), or the percent alone while the module count is unknown."""
    percent = f"{int(100 * (merge.get('progress') or 0.0))}%"
    total = merge.get("modules")
    if not total:
        return percent
    return f"{percent} ({round((merge.get('progress') or 0.0) * total)}/{total} modules)"


def energy_text(report: dict | None) -> str | None:
    """`>= 0.9993`: the least fraction of a module's update energy the result kept."""
    kept = (report or {}).get("energy_kept_min")
    return None if kept is None else f">= {kept:.4f}"


def format_merge(merge: dict) -> list[str]:
    """A Merge (state, spec, sources, licence and why, files, error, report) as lines."""
    spec, report = merge.get("spec") or {}, merge.get("report") or {}
    params = ", ".join(f"{key} {spec[key]}" for key in ("rank", "density",
                                                         "majority_sign_method", "seed",
                                                         "output", "dtype")
                       if spec.get(key) is not None)
    published = merge.get("published")
    lines = [f"merge {merge['id']} ({merge['status']})"]
    lines += detail_rows([("progress", progress_text(merge)),
                    ("method", spec.get("method")),
                    ("parameters", params or None),
                    ("created", merge.get("created_at")),
                    ("started", merge.get("started_at")),
                    ("finished", merge.get("finished_at")),
                    ("device", merge.get("device")),
                    ("elapsed", None if report.get("elapsed_s") is None
                     else f"{report['elapsed_s']:.2f}s"),
                    ("energy kept", energy_text(report)),
                    ("expires", "expired" if merge.get("expired") else merge.get("expires_at")),
                    ("published", None if not published
                     else f"{published['adapter']}@{published['version']}"),
                    ("licence", license_text(merge.get("license")))])
    lines.append("  sources:")
    lines += [f"    {source_text(s)}" for s in spec.get("sources") or []]
    reasons = (merge.get("license") or {}).get("reasons") or []
    if reasons:
        lines.append("  licence reasons:")
        lines += [f"    {reason}" for reason in reasons]
    files = merge.get("files") or []
    if files:
        lines.append("  files:")
        width = max(len(f["path"]) for f in files)
        lines += [f"    {f['path'].ljust(width)}  {human_bytes(f['size']):>10}  "
                  f"sha256 {f['sha256']}" for f in files]
    error = merge.get("error")
    if error:
        lines.append(f"  error: {error['detail']} ({error['code']})")
    return lines


def cancel_text(merge: dict) -> str:
    """What a DELETE did: cancelled, stopping between modules, or nothing (it had ended)."""
    if merge["status"] == "cancelled":
        return f"cancelled merge {merge['id']}"
    if merge["status"] in ("queued", "running"):
        return f"cancelling merge {merge['id']}: its worker stops at the next module"
    return f"merge {merge['id']} had already ended ({merge['status']}): nothing to cancel"


def publish_merge(client: HubClient, merge_id: str, ref: str, license_link: str | None) -> None:
    """Publish merge `merge_id` as owner/name@version and print the version made."""
    owner, name, label = split_pinned_ref(ref)
    body = {"adapter": f"{owner}/{name}", "version": label}
    if license_link:
        body["license_link"] = license_link
    try:
        response = client.request("POST", f"/merges/{merge_id}/publish", json=body)
    except InvalidRequest as error:
        if license_link or "'license_link'" not in error.detail:
            raise
        raise InvalidRequest(f"{error.detail.rstrip('.')}; pass it as --license-link URL"
                             f" (`lorastack merges publish {merge_id} {ref} --license-link URL`"
                             f" publishes this merge without running it again)") from None
    version = client.json(response)
    parents = ", ".join(f"{p['adapter']}@{p['version']}" for p in version.get("parents") or [])
    verb = "published" if response.status_code == 201 else "already published (identical)"
    click.echo(f"{verb} {version['adapter']}@{version['version']} (licence "
               f"{version['license']}; parents {parents or '-'})")


def _seconds(timestamp: str | None) -> str:
    """2026-01-02T03:04:05Z: an API time to the second, for a table."""
    return "-" if not timestamp else timestamp.split(".")[0].rstrip("Z") + "Z"


@click.group("merges")
def merges_group() -> None:
    """Your merges on the hub: list, show, cancel, publish."""


@merges_group.command("list")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON items.")
def list_merges(limit: int, as_json: bool) -> None:
    """Your merges, newest first."""
    items = HubClient().get_json("/merges", limit=limit)["items"]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("no merges")
        return
    rows = [(m["id"], m["status"] if m["status"] != "running"
             else f"running {int(100 * (m.get('progress') or 0.0))}%",
             (m.get("spec") or {}).get("method") or "-",
             " ".join(source_text(s) for s in (m.get("spec") or {}).get("sources") or []),
             _seconds(m.get("created_at")), m.get("device") or "-") for m in items]
    header = ("ID", "STATUS", "METHOD", "SOURCES", "CREATED", "DEVICE")
    widths = [max(len(r[c]) for r in rows + [header]) for c in range(len(header))]
    for row in [header] + rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@merges_group.command("show")
@click.argument("merge_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def show_merge(merge_id: str, as_json: bool) -> None:
    """A merge's state, spec, sources, licence, files, error and report summary."""
    merge = HubClient().get_json(f"/merges/{merge_id}")
    click.echo(json.dumps(merge, indent=2) if as_json else "\n".join(format_merge(merge)))


@merges_group.command("cancel")
@click.argument("merge_id", metavar="ID")
def cancel_merge(merge_id: str) -> None:
    """Cancel a queued merge, or stop a running one between modules."""
    client = HubClient()
    click.echo(cancel_text(client.json(client.request("DELETE", f"/merges/{merge_id}"))))


@merges_group.command("publish")
@click.argument("merge_id", metavar="ID")
@click.argument("ref", metavar="OWNER/NAME@VERSION")
@click.option("--license-link", default=None,
              help="URL of the combined terms, when the derived licence is a combination.")
def publish_command(merge_id: str, ref: str, license_link: str | None) -> None:
    """Publish a succeeded merge as a version, with its sources as parents."""
    publish_merge(HubClient(), merge_id, ref, license_link)
