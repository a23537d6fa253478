"""JSON shapes of the API (AdapterSummary, Version, ...), built from models in one place."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import inspect

from hub.models import Adapter, Merge, Version, utcnow
from hub.services.access import can_see
from hub.services.accounts import Principal


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, or None."""
    if moment is None:
        return None
    return moment.isoformat().replace("+00:00", "Z")


def latest_version(adapter: Adapter) -> Version | None:
    """The newest non-yanked version (versions are ordered newest first)."""
    return next((version for version in adapter.versions if not version.yanked), None)


def latest_label(adapter: Adapter) -> str | None:
    """The label of the latest version: from the versions when loaded, else from the
    adapter's own `latest_label` (a listing loads that in its query, not the versions)."""
    if "versions" in inspect(adapter).unloaded:
        return adapter.latest_label
    latest = latest_version(adapter)
    return latest.label if latest else None


def adapter_summary(adapter: Adapter) -> dict:
    """AdapterSummary."""
    return {
        "id": f"{adapter.owner.name}/{adapter.name}",
        "owner": adapter.owner.name,
        "name": adapter.name,
        "description": adapter.description,
        "base_model": adapter.base_model,
        "license": adapter.license,
        "tags": [tag.tag for tag in adapter.tags],
        "task": adapter.task,
        "latest_version": latest_label(adapter),
        "downloads": adapter.downloads,
        "created_at": iso(adapter.created_at),
        "updated_at": iso(adapter.updated_at),
        "visibility": adapter.visibility,
    }


def adapter_detail(adapter: Adapter, viewer: Principal | None = None) -> dict:
    """AdapterSummary plus its versions, newest first."""
    return {**adapter_summary(adapter),
            "versions": [version_view(version, adapter, viewer) for version in adapter.versions]}


def version_view(version: Version, adapter: Adapter | None = None,
                 viewer: Principal | None = None) -> dict:
    """Version; its lineage (`parents`, `children`) lists only what `viewer` may see."""
    adapter = adapter or version.adapter
    view = {
        "adapter": f"{adapter.owner.name}/{adapter.name}",
        "version": version.label,
        "created_at": iso(version.created_at),
        "license": version.license,
        "base_model": version.base_model,
        "peft_type": version.peft_type,
        "task_type": version.task_type,
        "r": version.r,
        "lora_alpha": version.lora_alpha,
        "target_modules": list(version.target_modules or []),
        "num_parameters": version.num_parameters,
        "size_bytes": version.size_bytes,
        "mergeable": version.mergeable,
        "not_mergeable_reason": version.not_mergeable_reason,
        "yanked": version.yanked,
        "yank_reason": version.yank_reason,
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in version.files],
        "parents": [{"adapter": f"{p.parent.adapter.owner.name}/{p.parent.adapter.name}",
                     "version": p.parent.label, "weight": p.weight}
                    for p in version.parents if can_see(viewer, p.parent.adapter)],
        "children": [{"adapter": f"{c.child.adapter.owner.name}/{c.child.adapter.name}",
                      "version": c.child.label}
                     for c in version.children if can_see(viewer, c.child.adapter)],
    }
    if version.license == "other":
        view["license_name"] = version.license_name
        view["license_link"] = version.license_link
    return view


def merge_view(merge: Merge, now: datetime | None = None,
               queue_position: int | None = None) -> dict:
    """Merge; `queue_position` is a queued merge's place in line."""
    expired = merge.expires_at is not None and merge.expires_at <= (now or utcnow())
    served = merge.status == "succeeded" and not expired
    view = {
        "id": merge.id,
        "status": merge.status,
        "queue_position": queue_position,
        "progress": round(merge.progress, 4),
        "modules": merge.modules_total,
        "spec": merge.spec,
        "created_at": iso(merge.created_at),
        "started_at": iso(merge.started_at),
        "finished_at": iso(merge.finished_at),
        "expires_at": iso(merge.expires_at),
        "expired": expired,
        "device": merge.device,
        "attempts": merge.attempts,
        "cancel_requested": merge.cancel_requested,
        "error": ({"code": merge.error_code, "detail": merge.error_detail}
                  if merge.error_code else None),
        "license": merge.license,
        "output_bytes": merge.output_bytes,
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256}
                  for f in merge.files] if served else [],
        "archive": ({"path": "archive.zip", "size": merge.archive_size,
                     "sha256": merge.archive_sha256} if served and merge.archive_sha256
                    else None),
        "report": merge.report,
        "published": ({"adapter": f"{merge.published_version.adapter.owner.name}/"
                                  f"{merge.published_version.adapter.name}",
                       "version": merge.published_version.label}
                      if merge.published_version is not None else None),
    }
    return view
