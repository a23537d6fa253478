"""Publishing a merge's result as a version, with its lineage and its derived licence."""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from hub.errors import InvalidMerge, InvalidRequest, LicenseForbidsMerge, MergeExpired
from hub.formats import ALLOWED_FILES
from hub.licenses import derive_license
from hub.models import Merge, utcnow
from hub.services.access import require_owner
from hub.services.accounts import Principal
from hub.services.merge_plan import source_license
from hub.services.merges import get_merge, is_expired
from hub.services.names import (check_adapter_name, check_user_name, parse_metadata,
                                split_adapter_id)
from hub.services.publish import LicenseChoice, PublishResult, Upload, publish_version
from hub.storage import BlobStore

PUBLISH_FIELDS = {"adapter", "version", "license_link", "description", "visibility"}


def publish_merge(session: Session, store: BlobStore, tmp_dir: Path,
                  principal: Principal | None, merge_id: str, body: dict) -> PublishResult:
    """Publish a succeeded LoRA merge as `body["adapter"]@body["version"]`."""
    unknown = sorted(set(body) - PUBLISH_FIELDS)
    if unknown:
        raise InvalidRequest(f"Unknown field(s): {', '.join(unknown)}; send adapter"
                             " (owner/name), version, and optionally license_link,"
                             " description, visibility.")
    owner, name = _target(body.get("adapter"))
    label = body.get("version")
    if not isinstance(label, str) or not label:
        raise InvalidRequest("'version' is required: the label to publish under (e.g. 1.0.0).")
    merge = get_merge(session, principal, merge_id)
    require_owner(principal, owner, session)
    if merge.status != "succeeded":
        raise InvalidMerge(f"Merge {merge.id} is {merge.status}; only a succeeded merge can be"
                           " published.")
    if is_expired(merge):
        raise MergeExpired(f"The result of merge {merge.id} expired; send the merge again.")
    if merge.spec.get("output") != "lora":
        raise InvalidMerge("A dense delta is not an adapter PEFT loads: publish a merge made"
                           " with output lora.")
    choice = _license(merge, owner, body.get("license_link"))
    metadata = parse_metadata({key: body[key] for key in ("description", "visibility")
                               if body.get(key) is not None})
    if metadata.visibility is None and any(
            s.version.adapter.visibility != "public" for s in merge.sources):
        # A merge of a private adapter names it (parents, model card): private unless asked.
        metadata = replace(metadata, visibility="private")
    files = [file for file in merge.files if file.path in ALLOWED_FILES]
    parents = tuple((source.version_id, source.weight) for source in merge.sources)
    # Copying the files out of the store can take minutes: hold no transaction meanwhile
    # (the rows read so far stay loaded; publish_version checks what matters again).
    session.commit()
    work = Path(tempfile.mkdtemp(prefix=f"publish-{merge.id}-", dir=tmp_dir))
    try:
        uploads = [_fetch(store, file, work) for file in files]
        result = publish_version(session, store, principal, owner, name, label, uploads,
                                 choice, metadata, parents)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # The version holds its blobs now, and the merge keeps serving them: no expiry. Unless
    # gc expired it while the files were copied (then nothing of this publish is kept).
    kept = session.execute(
        update(Merge).where(Merge.id == merge.id,
                            or_(Merge.expires_at.is_(None), Merge.expires_at > utcnow()))
        .values(published_version_id=result.version.id, expires_at=None)
        .execution_options(synchronize_session=False)).rowcount
    if not kept:
        raise MergeExpired(f"The result of merge {merge.id} expired while it was being"
                           " published; send the merge again.")
    session.refresh(merge)
    return result


def _target(adapter: object) -> tuple[str, str]:
    parts = split_adapter_id(adapter)
    if parts is None:
        raise InvalidRequest(f"'adapter' must be 'owner/name', got {adapter!r}")
    return check_user_name(parts[0]), check_adapter_name(parts[1])


def _license(merge, owner: str, link: object) -> LicenseChoice:
    """The merge's licence, derived again for the publishing owner: a no-derivatives source
    may be merged by its owner, but published only under that owner's name."""
    given = [source_license(s.version, s.version.adapter.owner.name == owner)
             for s in merge.sources]
    try:
        derived = derive_license(given)
    except LicenseForbidsMerge as error:
        raise LicenseForbidsMerge(f"{error.detail}; it cannot be published under {owner}/.")
    if link is not None and not isinstance(link, str):
        raise InvalidRequest("'license_link' must be a URL string.")
    license_link = derived.license_link or link
    if derived.id == "other" and not license_link:
        raise InvalidRequest(f"The merge's licence is '{derived.license_name}': send"
                             " 'license_link', an http(s) URL where the combined terms (each"
                             " source's licence) can be read.")
    if derived.id != "other":
        return LicenseChoice(derived.id)
    return LicenseChoice("other", derived.license_name, license_link)


def _fetch(store: BlobStore, file, work: Path) -> Upload:
    path = work / file.path
    with store.open_read(file.blob_key) as source, open(path, "wb") as out:
        shutil.copyfileobj(source, out, 4 << 20)
    return Upload(name=file.path, path=path, size=file.size, sha256=file.sha256)
