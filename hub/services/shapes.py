"""JSON shapes of the API (AdapterSummary, Version, ...), built from models in one place."""
from __future__ import annotations

from datetime import datetime

from hub.models import Adapter, Version


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, or None."""
    if moment is None:
        return None
    return moment.isoformat().replace("+00:00", "Z")


def latest_version(adapter: Adapter) -> Version | None:
    """The newest non-yanked version (versions are ordered newest first)."""
    return next((version for version in adapter.versions if not version.yanked), None)


def adapter_summary(adapter: Adapter) -> dict:
    """AdapterSummary."""
    latest = latest_version(adapter)
    return {
        "id": f"{adapter.owner.name}/{adapter.name}",
        "owner": adapter.owner.name,
        "name": adapter.name,
        "description": adapter.description,
        "base_model": adapter.base_model,
        "license": adapter.license,
        "tags": [tag.tag for tag in adapter.tags],
        "task": adapter.task,
        "latest_version": latest.label if latest else None,
        "downloads": adapter.downloads,
        "created_at": iso(adapter.created_at),
        "updated_at": iso(adapter.updated_at),
        "visibility": adapter.visibility,
    }


def adapter_detail(adapter: Adapter) -> dict:
    """AdapterSummary plus its versions, newest first."""
    return {**adapter_summary(adapter),
            "versions": [version_view(version, adapter) for version in adapter.versions]}


def version_view(version: Version, adapter: Adapter | None = None) -> dict:
    """Version."""
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
        "yanked": version.yanked,
        "yank_reason": version.yank_reason,
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in version.files],
        "parents": [{"adapter": f"{p.parent.adapter.owner.name}/{p.parent.adapter.name}",
                     "version": p.parent.label, "weight": p.weight}
                    for p in version.parents],
    }
    if version.license == "other":
        view["license_name"] = version.license_name
        view["license_link"] = version.license_link
    return view
