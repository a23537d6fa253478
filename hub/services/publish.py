"""Publishing a version: validate everything, store the blobs, then commit the rows."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hub.errors import (NotFound, StorageUnavailable, UnexpectedFile, UnknownLicense,
                        VersionExists)
from hub.formats import AdapterInfo, validate_upload
from hub.licenses import get_license, validate_license_fields
from hub.models import Adapter, User, Version, VersionFile, VersionParent, utcnow
from hub.services.accounts import Principal
from hub.services.blobs import lock_blobs
from hub.services.access import require_owner
from hub.services.catalog import set_tags
from hub.services.names import (Metadata, check_adapter_name, check_adapter_name_free,
                                check_tags, check_user_name, check_version_label, readme_tags)
from hub.storage import BlobStore, blob_key


@dataclass(frozen=True)
class Upload:
    """An uploaded file, already on disk, hashed while it streamed in."""

    name: str
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class LicenseChoice:
    """The licence fields of a publish request (any may be missing)."""

    license: str | None = None
    license_name: str | None = None
    license_link: str | None = None


@dataclass(frozen=True)
class PublishResult:
    """The version and whether this request created it (201) or found it (200)."""

    adapter: Adapter
    version: Version
    created: bool


def fingerprint(uploads: list[Upload]) -> str:
    """A digest of the (path, sha256) pairs: equal iff the files are identical."""
    digest = hashlib.sha256()
    for upload in sorted(uploads, key=lambda u: u.name):
        digest.update(f"{upload.name}\0{upload.sha256}\n".encode())
    return digest.hexdigest()


def _resolve_license(choice: LicenseChoice, info: AdapterInfo) -> LicenseChoice:
    """The form's licence, else the README's front matter; it must be in the table."""
    readme = info.readme
    license_id = choice.license or (readme.license if readme else None)
    if not license_id:
        raise UnknownLicense("A licence is required: send 'license' (see GET /api/v1/licenses)"
                             " or put 'license:' in the README's front matter.")
    license_id = get_license(license_id).id
    name, link = choice.license_name, choice.license_link
    if license_id == "other" and readme is not None:
        # The README's names describe its own licence only when that is 'other' too.
        name = name or readme.license_name
        link = link or readme.license_link
    _, name, link = validate_license_fields(license_id, name, link)
    return LicenseChoice(license_id, name, link)


def publish_version(session: Session, store: BlobStore, principal: Principal | None,
                    owner: str, name: str, label: str, uploads: list[Upload],
                    choice: LicenseChoice, metadata: Metadata,
                    parents: tuple[tuple[int, float], ...] = ()) -> PublishResult:
    """Publish `uploads` as `owner/name@label`; idempotent for identical files.

    `parents`: (version id, weight) of the versions a merged adapter was made from.
    The session's transaction is committed before the blobs are stored (it has only read
    so far); a new one then checks again and inserts the rows.
    """
    check_user_name(owner)
    check_adapter_name(name)
    check_version_label(label)
    require_owner(principal, owner, session)
    names = [upload.name for upload in uploads]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UnexpectedFile(f"File(s) sent twice: {', '.join(duplicates)}.")
    print_ = fingerprint(uploads)
    owner_row = session.scalar(select(User).where(User.name == owner))
    if owner_row is None:
        raise NotFound(f"No user named {owner!r}.")
    # An existing label is answered from the digests alone: a re-sent multi-GB version
    # costs no second scan of its bytes.
    existing = _existing(session, owner_row.id, name, label)
    if existing is not None:
        return _same_or_conflict(existing, print_, owner, name, label)
    # Real adapter headers are well under 1 MB; a cap keeps a crafted one from costing GBs.
    info = validate_upload({upload.name: upload.path for upload in uploads},
                           max_header_bytes=16 * 1024 * 1024)
    license_choice = _resolve_license(choice, info)

    # Blobs first: a row must never name bytes that are not stored yet. The reads above
    # end their transaction before the upload, which can take minutes: a connection held
    # "idle in transaction" meanwhile would be one fewer in the pool for everyone else.
    session.commit()
    _store(store, uploads)
    for attempt in range(3):
        try:
            # Under the blobs' locks, to the commit (hub.services.blobs): `lorastack gc` may
            # have deleted one that was already stored (an old orphan) since.
            lock_blobs(session, (blob_key(upload.sha256) for upload in uploads))
            gone = [u for u in uploads if store.size(blob_key(u.sha256)) != u.size]
            if gone:
                if attempt == 2:
                    raise StorageUnavailable("The uploaded files were deleted from storage"
                                             " while being published (is `lorastack gc`"
                                             " running with no grace period?); send them"
                                             " again.")
                # Store them again without holding the locks (an upload can take minutes),
                # then take the locks and look again.
                session.rollback()
                _store(store, gone)
                continue
            adapter, version = _insert(session, principal, owner_row, name, label, uploads,
                                       info, license_choice, metadata, print_)
            version.parents = [VersionParent(parent_version_id=parent, weight=weight)
                               for parent, weight in parents]
            session.flush()
            break
        except IntegrityError:
            # Someone created the same adapter or version at the same moment: start over
            # from what they committed (the session holds nothing else of ours).
            session.rollback()
            owner_row = session.scalar(select(User).where(User.name == owner))
            existing = _existing(session, owner_row.id, name, label)
            if existing is not None:
                return _same_or_conflict(existing, print_, owner, name, label)
            if attempt == 2:
                raise
    return PublishResult(adapter, version, True)


def _store(store: BlobStore, uploads: list[Upload]) -> None:
    for upload in uploads:
        store.put_file(blob_key(upload.sha256), upload.path, size=upload.size,
                       sha256=upload.sha256, consume=True)


def _existing(session: Session, owner_id: int, name: str, label: str) -> Version | None:
    return session.scalar(select(Version).join(Adapter)
                          .where(Adapter.owner_id == owner_id, Adapter.name == name,
                                 Version.label == label))


def _same_or_conflict(existing: Version, print_: str, owner: str, name: str,
                      label: str) -> PublishResult:
    if existing.fingerprint == print_:
        return PublishResult(existing.adapter, existing, False)
    raise VersionExists(f"{owner}/{name}@{label} already exists with different files;"
                        " versions are immutable: publish under a new version label.")


def _insert(session: Session, principal: Principal, owner_row: User, name: str, label: str,
            uploads: list[Upload], info: AdapterInfo, license_choice: LicenseChoice,
            metadata: Metadata, print_: str) -> tuple[Adapter, Version]:
    now = utcnow()
    readme = info.readme
    base_model = (metadata.base_model or info.base_model
                  or (readme.base_model if readme else None))
    adapter = session.scalar(select(Adapter).where(Adapter.owner_id == owner_row.id,
                                                   Adapter.name == name))
    if adapter is None:
        check_adapter_name_free(session, owner_row.id, owner_row.name, name)
        adapter = Adapter(owner=owner_row, name=name, visibility=metadata.visibility or "public",
                          created_at=now, downloads=0, description="")
        session.add(adapter)
    description = metadata.description
    if description is None and not adapter.description and readme is not None:
        description = readme.front_matter.get("description") if isinstance(
            readme.front_matter.get("description"), str) else None
    if description is not None:
        adapter.description = description
    if metadata.tags is not None:
        tags = check_tags(list(metadata.tags))
    else:
        tags = readme_tags(readme.tags) if readme else []
    if tags:
        set_tags(adapter, tags)
    task = metadata.task or (readme.task if readme else None) or info.task_type
    if task:
        adapter.task = task
    adapter.base_model = base_model
    adapter.license = license_choice.license
    adapter.updated_at = now
    version = Version(
        adapter=adapter, label=label, created_at=now, license=license_choice.license,
        license_name=license_choice.license_name, license_link=license_choice.license_link,
        base_model=base_model, peft_type=info.peft_type, task_type=info.task_type,
        r=info.r, lora_alpha=info.lora_alpha, target_modules=list(info.target_modules),
        num_parameters=info.num_parameters, size_bytes=sum(u.size for u in uploads),
        mergeable=info.mergeable, not_mergeable_reason=info.not_mergeable_reason,
        fingerprint=print_, yanked=False,
        created_by_id=principal.user_id,
        files=[VersionFile(path=u.name, size=u.size, sha256=u.sha256,
                           blob_key=blob_key(u.sha256)) for u in uploads])
    session.add(version)
    session.flush()
    return adapter, version
